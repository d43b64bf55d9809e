#!/usr/bin/env bash
# The one-shot `check-secrets` service of docker-compose.yaml, which every other service waits for
# (service_completed_successfully): it refuses to start the stack while a secret is empty, still
# the placeholder of .env.example ("change-me..."), too short to be a generated one, or (the
# Fernet key) not a Fernet key. Each problem is printed with the variable's name; exit 1 if any.
#   bash scripts/check-secrets.sh          # checks the variables below in this environment
set -uo pipefail

SECRETS=(
  POSTGRES_PASSWORD AIRFLOW_DB_PASSWORD MLFLOW_DB_PASSWORD REDIS_PASSWORD
  AIRFLOW_ADMIN_PASSWORD AIRFLOW_FERNET_KEY AIRFLOW_JWT_SECRET AIRFLOW_API_SECRET_KEY
  MLFLOW_ADMIN_PASSWORD MLFLOW_TASK_PASSWORD MLFLOW_FLASK_SECRET_KEY
)
MIN_LENGTH=12  # `openssl rand -hex 24` gives 48; a short one is typed by hand, i.e. guessable

failed=0
for name in "${SECRETS[@]}"; do
  value="${!name-}"
  problem=""
  if [[ -z "$value" ]]; then
    problem="is not set (copy .env.example to .env and fill it)"
  elif [[ "$value" == change-me* ]]; then
    problem="still holds the placeholder of .env.example"
  elif (( ${#value} < MIN_LENGTH )); then
    problem="is shorter than $MIN_LENGTH characters"
  elif [[ "$name" == AIRFLOW_FERNET_KEY && ! "$value" =~ ^[A-Za-z0-9_-]{43}=$ ]]; then
    problem="is not a Fernet key (32 url-safe base64 bytes, see .env.example)"
  fi
  if [[ -n "$problem" ]]; then
    echo "check-secrets: $name $problem" >&2
    failed=1
  fi
done
if (( failed )); then
  echo "check-secrets: refusing to start; set the variables above in .env" >&2
  exit 1
fi
echo "check-secrets: ${#SECRETS[@]} secrets set, none a placeholder"
