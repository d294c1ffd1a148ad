#!/bin/bash
# Keycloak reads its database password and the realm import's placeholders from the environment
# only; compose hands them over as files.  For every NAME listed in KC_SECRET_FILES, export NAME
# with the content of the file NAME_FILE names, then start Keycloak with the arguments given.
# A missing variable or file stops here: Keycloak never starts with an empty password.
# (KC_SH only lets tests replace kc.sh.)
set -euo pipefail
for name in ${KC_SECRET_FILES:-}; do
  file_var="${name}_FILE"
  file="${!file_var:?$name: $file_var is not set}"
  value="$(cat -- "$file")" || { echo "$name: cannot read $file" >&2; exit 1; }
  export "$name=$value"
done
exec "${KC_SH:-/opt/keycloak/bin/kc.sh}" "$@"
