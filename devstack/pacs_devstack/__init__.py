"""The real local stack (Keycloak, Samba AD, OpenLDAP, Orthanc, SCIM, PostgreSQL, rsyslog).

One code path serves `make demo`, the pytest session fixtures and `pacs-bridge devstack
up|down|status`: see :mod:`pacs_devstack.stack`.  Every service is started from Debian
packages or a pinned Maven artifact, bound to loopback, and recorded under `.devstack/` so that
`down` stops exactly what was started, even after the caller crashed.
"""
