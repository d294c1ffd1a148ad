"""The encrypted image store's tests use the PACS tests' fixtures: the stack's Orthanc with the bridge
plugin (whose storage area encrypts every file), the bridge double and the demo studies."""

from tests.integration.pacs.conftest import audit_events, bridge_double, orthanc, pacs, studies  # noqa: F401
