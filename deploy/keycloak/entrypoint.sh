#!/bin/bash
# Keycloak reads its database password and the realm import's placeholders from the environment
# only; compose hands them over as files.  For every NAME_FILE listed in KC_SECRET_FILES, export
# NAME with the file's content, then start Keycloak with the arguments given.
set -euo pipefail
for name in ${KC_SECRET_FILES:-}; do
  file_var="${name}_FILE"
  export "$name"="$(cat "${!file_var}")"
done
exec /opt/keycloak/bin/kc.sh "$@"
