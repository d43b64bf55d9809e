#!/usr/bin/env bash
# PostgreSQL init script (docker-entrypoint-initdb.d): runs once, when the data volume is new.
# One server, two databases (and MLflow's user store), each owned by its own login role, so Airflow's metadata and MLflow's
# tracking store + registry can be backed up, migrated and permissioned separately.
# The passwords come from the postgres container's environment, i.e. from .env.
# The official entrypoint sources this file when it is not executable: no `exit`, no `set -u`.
set -eo pipefail

: "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD must be set (see .env.example)}"
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD must be set (see .env.example)}"

create_owned_database() {
  # psql quotes :"name" as an identifier and :'password' as a literal, so a password may hold
  # any character without breaking (or injecting into) the SQL.
  psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v name="$1" -v password="$2" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
SQL
}

create_owned_database airflow "$AIRFLOW_DB_PASSWORD"
create_owned_database mlflow "$MLFLOW_DB_PASSWORD"
# The user store of MLflow's basic-auth app, apart from the tracking data, owned by the same role.
# A data volume made before this line existed needs it once by hand (CREATE DATABASE ... OWNER mlflow).
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
  -c 'CREATE DATABASE mlflow_auth OWNER mlflow;'
