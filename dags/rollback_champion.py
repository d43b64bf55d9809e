"""
### Roll the champion back

Trigger from the UI with a **reason** (and optionally the **version** to restore; empty: the version
the current champion replaced). The rollback goes through the same door as a promotion: it takes the
promotion lock, restores only a version that was champion before, and appends a `rollback` entry to
the ledger (`python -m driftwheel history` lists it; in MLflow, experiment `driftwheel-ledger`).
The same from a shell: `python -m driftwheel rollback [--to VERSION] --reason TEXT`.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="rollback_champion",
    schedule=None,
    start_date=pendulum.datetime(2008, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,  # triggered by hand only: nothing runs unless someone asks
    doc_md=__doc__,
    tags=["flywheel", "mlflow", "operations"],
    params={
        "reason": Param(
            type="string", minLength=3, description="Why the champion is rolled back (kept in the ledger)."
        ),
        "to_version": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="Version to restore; empty: the one the champion replaced.",
        ),
    },
)
def rollback_champion() -> None:
    @task(retries=0)
    def rollback_champion() -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from driftwheel import steps
        from driftwheel.config import Settings

        params = get_current_context()["params"]
        to_version = params.get("to_version")
        try:
            return steps.rollback_champion(
                Settings.from_env(), params["reason"], str(to_version) if to_version else None
            )
        except (LookupError, ValueError) as refused:
            raise AirflowFailException(str(refused)) from refused

    rollback_champion()


rollback_champion()
