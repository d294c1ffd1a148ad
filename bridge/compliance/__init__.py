"""The compliance evidence report: each HIPAA 164.312 / GDPR Art. 32 control mapped to evidence
read from the running deployment (`pacs-bridge compliance report`).

Why a package of its own: it reads every other part (configuration, audit chain, key ring,
Keycloak, the review and break-glass stores) and nothing imports it back, so it sits at the top
of the layer picture next to the CLI.  See docs/governance.md for the control map.
"""
