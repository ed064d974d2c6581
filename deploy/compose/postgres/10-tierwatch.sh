#!/bin/sh
# Runs once, when the example PostgreSQL initialises its data directory: the role tierwatch logs in as
# (docs/tiers/postgres.md: pg_monitor is all it needs), with the password from the compose secret.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v password="$(cat /run/secrets/pg)" <<'SQL'
CREATE ROLE tierwatch LOGIN PASSWORD :'password' IN ROLE pg_monitor;
SQL
