"""
### The flywheel's twin: the same graph, tasks that do nothing

`benchmarks/orchestration.py` backfills this DAG right after `spotify_flywheel` on the same stack:
the same task ids, edges, trigger rules, default args and schedule, TaskFlow tasks that pass small
dicts by XCom as the real ones do, and bodies that return at once. The branch tasks take the branch
the real DAG took for the same year (read from the JSON file `FLYWHEEL_TWIN_BRANCHES` names, which
the benchmark writes after the real backfill), so both backfills run and skip the same task
instances. What the twin's backfill costs is Airflow's floor for the flywheel's shape.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import dag, get_current_context, task

from driftwheel.config import Schedule

SCHEDULE = Schedule.from_env()


def _branch(decision: str, default: str) -> str:
    """The task id the real DAG's ``decision`` task chose for this run's year, else ``default``."""
    import json
    import os
    from pathlib import Path

    path = os.environ.get("FLYWHEEL_TWIN_BRANCHES")
    if not path or not Path(path).exists():
        return default
    year = str(get_current_context()["logical_date"].year)
    chosen: dict[str, dict[str, str]] = json.loads(Path(path).read_text())
    return chosen.get(year, {}).get(decision, default)


@dag(
    dag_id="flywheel_twin",
    schedule="@yearly",
    start_date=pendulum.datetime(SCHEDULE.first_year, 1, 1, tz="UTC"),
    end_date=pendulum.datetime(SCHEDULE.last_year, 12, 31, tz="UTC") if SCHEDULE.last_year else None,
    catchup=False,
    max_active_runs=1,
    default_args={"depends_on_past": True, "retries": 1, "retry_delay": pendulum.duration(seconds=10)},
    doc_md=__doc__,
    tags=["benchmark"],
)
def flywheel_twin() -> None:
    @task
    def ingest_tracks() -> dict[str, Any]:
        return {"period": get_current_context()["logical_date"].year}

    @task
    def validate_tracks(landed: dict[str, Any]) -> dict[str, Any]:
        return landed

    @task
    def report_drift(validated: dict[str, Any]) -> dict[str, Any]:
        return {**validated, "mlflow_run_id": "none", "champion_version": None}

    @task.branch
    def decide_retrain(summary: dict[str, Any]) -> str:
        return _branch("decide_retrain", "retrain_model")

    @task
    def skip_retrain(summary: dict[str, Any]) -> None:
        """Nothing to do, as in the real DAG."""

    @task
    def retrain_model(summary: dict[str, Any]) -> dict[str, Any]:
        return {"version": "1"}

    @task
    def evaluate_challenger(summary: dict[str, Any], challenger: dict[str, Any]) -> dict[str, Any]:
        return {"passed": True, "reason": ""}

    @task.branch
    def decide_promotion(gate: dict[str, Any]) -> str:
        return _branch("decide_promotion", "promote_champion")

    @task
    def promote_champion(summary: dict[str, Any], challenger: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
        return {"promoted": True}

    @task
    def reject_challenger(summary: dict[str, Any], challenger: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
        return {"promoted": False}

    @task(trigger_rule="none_failed_min_one_success")
    def finish_period(summary: dict[str, Any]) -> dict[str, Any]:
        return {"period": summary["period"]}

    summary = report_drift(validate_tracks(ingest_tracks()))
    decision = decide_retrain(summary)
    challenger = retrain_model(summary)
    gate = evaluate_challenger(summary, challenger)
    promoted, rejected = promote_champion(summary, challenger, gate), reject_challenger(summary, challenger, gate)
    skipped = skip_retrain(summary)
    decision >> [challenger, skipped]
    decide_promotion(gate) >> [promoted, rejected]
    [promoted, rejected, skipped] >> finish_period(summary)


flywheel_twin()
