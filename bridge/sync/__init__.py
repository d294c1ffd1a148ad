"""Directory -> policy -> plan -> safety gate -> targets (Keycloak, SCIM, the bridge's store).

Each step is a pure function except reading (directory, targets) and applying; see docs/sync.md."""
