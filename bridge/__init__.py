"""PACS SSO Bridge: directory groups to Keycloak roles, MFA-enforced PACS tokens, audit."""

__version__ = "0.1.0"
