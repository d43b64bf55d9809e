#!/usr/bin/env bash
# The server topology without Docker: `scripts/stack.sh up|down|status`.
# Starts MLflow and Airflow (api-server, dag-processor, triggerer, scheduler, N Celery workers) as
# processes on an existing PostgreSQL and Redis, configured by the environment; see
# include/driftwheel_ops/native_stack.py for the variables (FLYWHEEL_AIRFLOW_DB_URI, FLYWHEEL_MLFLOW_DB_URI,
# FLYWHEEL_CELERY_BROKER_URL, FLYWHEEL_WORKERS, ...). `up` starts only what is not running; `down` stops only
# what `up` started; `status` says what runs (exit 1 when something is dead or a foreign process holds a port).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON_BIN:-$repo/.venv/bin/python}"
export PYTHONPATH="$repo/include${PYTHONPATH:+:$PYTHONPATH}"
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
exec "$python" -m driftwheel_ops.native_stack "${1:-status}"
