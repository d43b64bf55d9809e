"""A trivial three-task DAG for the end-to-end tests of driftwheel_ops.local_stack."""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task


@dag(
    dag_id="stack_smoke",
    schedule="@yearly",
    start_date=pendulum.datetime(2008, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["e2e"],
)
def stack_smoke() -> None:
    @task
    def extract(logical_date: pendulum.DateTime | None = None) -> int:
        import os
        import sys

        # Which of the modules the stack preloads this task process got from its parent (the tests
        # read it from the task log): the DAG file and Airflow import none of them.
        wanted = [m for m in os.environ.get("DRIFTWHEEL_PRELOAD", "").split(",") if m]
        print("preloaded in the task process:", " ".join(m for m in wanted if m in sys.modules) or "nothing")
        # Manually triggered runs have no logical date in Airflow 3.
        return (logical_date or pendulum.now("UTC")).year

    @task
    def transform(year: int) -> int:
        return year * 2

    @task
    def load(value: int) -> None:
        assert value % 2 == 0

    load(transform(extract()))


stack_smoke()
