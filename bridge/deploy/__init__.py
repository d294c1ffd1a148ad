"""How a site runs the bridge: the canonical web server command line (`pacs-bridge web`) and the
generated Orthanc configuration (`pacs-bridge plugin orthanc-config`).  docker-compose.yml, the
systemd units under deploy/systemd/ and the dev stack all start the same commands, so what the
parity tests prove for one holds for the others."""
