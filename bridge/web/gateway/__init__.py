"""The browser gateway to Orthanc at ``<public URL><gateway.prefix>/`` (docs/gateway.md).

A backend-for-frontend: the browser logs in through Keycloak (the login blueprint's Authlib
client, MFA as everywhere), the bridge keeps the PACS token server-side (:mod:`.sessions`) and
forwards each request to Orthanc with it (:mod:`.proxy`); the Orthanc plugin still decides every
request.  Rules: :mod:`.rules`; pages: :mod:`.pages`; Keycloak calls: :mod:`.keycloak`.
"""

from bridge.web.gateway.views import EXTENSION, init_app

__all__ = ["EXTENSION", "init_app"]
