#!/bin/bash
# Runs once, when the postgres container initialises an empty data directory: one database and
# one login role each for Keycloak and the bridge (neither can read the other's data).
# Passwords come from the secret files; the bridge's is the last field of its libpq passfile
# (host:port:database:user:password), the one file the bridge itself reads.
set -euo pipefail
keycloak_password="$(cat /run/secrets/keycloak_db_password)"
bridge_password="$(cut -d: -f5- /run/secrets/bridge_db_pgpass | head -n1 | sed 's/\\\(.\)/\1/g')"
[ -n "$keycloak_password" ] || { echo "keycloak_db_password is empty" >&2; exit 1; }
[ -n "$bridge_password" ] || { echo "bridge_db_pgpass has no password (host:port:db:user:password)" >&2; exit 1; }
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v kc_pw="$keycloak_password" -v br_pw="$bridge_password" <<'SQL'
CREATE ROLE keycloak LOGIN PASSWORD :'kc_pw';
CREATE ROLE bridge LOGIN PASSWORD :'br_pw';
CREATE DATABASE keycloak OWNER keycloak;
CREATE DATABASE bridge OWNER bridge;
REVOKE ALL ON DATABASE keycloak FROM PUBLIC;
REVOKE ALL ON DATABASE bridge FROM PUBLIC;
SQL
