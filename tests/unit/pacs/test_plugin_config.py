"""The plugin's settings: one verifier configuration with a nested ``mfa`` section, each parsed in one place."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.core.mfa import MfaRule
from bridge.pacs import plugin_config
from bridge.pacs.plugin_config import PluginConfigError

BASE: dict[str, Any] = {"issuer": "https://b.test", "audience": "pacs", "jwks_url": "https://b.test/jwks.json",
                        "revocation_url": "https://b.test/revocations"}


def test_generated_plugin_settings_carry_the_bridges_mfa_rule(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The PACS applies the same MFA rule as /token: a changed `mfa` section reaches the plugin."""
    from bridge.config import load_config
    from bridge.deploy.orthanc_config import plugin_settings

    mfa = load_config(None, mfa={"required_acr": "gold", "accepted_amr": ["hwk"], "max_auth_age_seconds": 600}).mfa
    data = plugin_settings(issuer="https://bridge.test", audience="pacs", ca_file=None, spool_dir=tmp_path,
                           orthanc_log_file=None, pacs_name="orthanc", mfa=mfa)
    cfg = plugin_config.build(data, "test")
    assert data["mfa"] == {"required_acr": "gold", "accepted_amr": ["hwk"], "max_auth_age_seconds": 600}
    assert cfg.mfa == MfaRule("gold", frozenset({"hwk"}), 600)
    assert cfg.verifier_config().mfa_rule == cfg.mfa



def test_mfa_is_a_nested_section() -> None:
    cfg = plugin_config.build({**BASE, "mfa": {"required_acr": None, "accepted_amr": ["hwk"]}}, "f.json", {})
    assert cfg.mfa == MfaRule(None, frozenset({"hwk"}), MfaRule().max_auth_age_seconds)
    verifier = cfg.verifier_config()
    assert (verifier.issuer, verifier.revocation_url, verifier.mfa_rule) == (
        "https://b.test", "https://b.test/revocations", cfg.mfa)


def test_no_mfa_section_is_the_default_rule() -> None:
    assert plugin_config.build(BASE, "f.json", {}).mfa == MfaRule()


@pytest.mark.parametrize("key", ["mfa_required_acr", "mfa_accepted_amr", "mfa_max_auth_age_seconds"])
def test_flat_mfa_keys_are_unknown(key: str) -> None:
    with pytest.raises(PluginConfigError, match=f"unknown key.*{key}"):
        plugin_config.build({**BASE, key: "x"}, "f.json", {})


@pytest.mark.parametrize(("section", "named"), [
    ([], "mfa"), ("mfa", "mfa"), ({"bogus": 1}, "mfa.bogus"), ({"accepted_amr": "otp"}, "mfa.accepted_amr"),
    ({"accepted_amr": [1]}, "mfa.accepted_amr"), ({"max_auth_age_seconds": "soon"}, "mfa.max_auth_age_seconds"),
    ({"max_auth_age_seconds": True}, "mfa.max_auth_age_seconds"), ({"required_acr": 3}, "mfa.required_acr"),
    ({"required_acr": None, "accepted_amr": []}, "mfa"),
])
def test_bad_mfa_section_names_the_key_and_file(section: Any, named: str) -> None:
    with pytest.raises(PluginConfigError, match=rf"f\.json: {named.replace('.', chr(92) + '.')}"):
        plugin_config.build({**BASE, "mfa": section}, "f.json", {})


def test_mfa_keys_overridable_by_environment() -> None:
    env = {"PACS_BRIDGE_PLUGIN_MFA_MAX_AUTH_AGE_SECONDS": "60", "PACS_BRIDGE_PLUGIN_MFA_ACCEPTED_AMR": "otp hwk"}
    cfg = plugin_config.build({**BASE, "mfa": {"max_auth_age_seconds": 600}}, "f.json", env)
    assert cfg.mfa == MfaRule(MfaRule().required_acr, frozenset({"otp", "hwk"}), 60)
