"""Browser login against Keycloak: the Authlib client, the bridge session and back-channel logout."""
