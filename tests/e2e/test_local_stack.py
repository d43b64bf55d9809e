"""End to end: the real Airflow 3 scheduler backfills a trivial DAG through driftwheel_ops.local_stack."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy

from driftwheel_ops.local_stack import LocalStack, RunState, StackConfig

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DAGS = Path(__file__).resolve().parent / "dags"
DAG_ID = "stack_smoke"
TASKS = {"extract", "transform", "load"}


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    # Unix socket paths are limited to ~100 characters, and the embedded PostgreSQL's socket lives
    # in here. As root, PostgreSQL runs as its own user, which must traverse the parent folders;
    # every pytest session (also another person's) resets /tmp/pytest-of-root to 0700.
    if len(str(tmp_path)) <= 80 and os.geteuid() != 0:
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(prefix="flywheel-e2e-", dir="/tmp"))
    yield short
    shutil.rmtree(short, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_task_timings(stack: LocalStack, runs: list[RunState], wall: float) -> None:
    """Seconds per task instance: inside the task (start->end) and over the backfill's wall time."""
    conn = psycopg2.connect(stack.airflow_db_uri.replace("+psycopg2", ""))
    with conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*), AVG(EXTRACT(EPOCH FROM end_date - start_date)),"
            " EXTRACT(EPOCH FROM MAX(end_date) - MIN(start_date))"
            " FROM task_instance WHERE dag_id = %s AND run_id = ANY(%s)",
            (DAG_ID, [r.run_id for r in runs]),
        )
        n, in_task, span = cur.fetchone()
    conn.close()
    log.info(
        "%d task instances: %.2fs each inside the task; first start to last end %.1fs "
        "(%.2fs per task instance); backfill wall %.1fs (%.2fs per task instance)",
        n, in_task, span, span / n, wall, wall / n,
    )  # fmt: skip


def _preloaded_in_task(stack: LocalStack, run: RunState) -> str:
    """What the ``extract`` task of the run printed about the modules it found already imported."""
    log_file = (
        stack.airflow_home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run.run_id}" / "task_id=extract" / "attempt=1.log"
    )
    found = [line for line in log_file.read_text().splitlines() if "preloaded in the task process:" in line]
    assert len(found) == 1, log_file
    return str(json.loads(found[0])["event"]).split(":", 1)[1].strip()


def _backfill_and_check(stack: LocalStack, start: date, end: date, years: int) -> list[RunState]:
    stack.wait_for_dag(DAG_ID)
    finished: list[RunState] = []
    t0 = time.monotonic()
    runs = stack.backfill(DAG_ID, start, end, timeout=900, on_run_finished=finished.append)
    wall = time.monotonic() - t0
    log.info("backfill of %d runs took %.1fs", len(runs), wall)

    assert [r.logical_date.year for r in runs if r.logical_date] == list(range(start.year, start.year + years))
    assert [r.state for r in runs] == ["success"] * years
    assert sorted(r.run_id for r in finished) == sorted(r.run_id for r in runs)
    for run in runs:
        assert stack.task_states(DAG_ID, run.run_id) == dict.fromkeys(TASKS, "success")
    _log_task_timings(stack, runs, wall)
    return runs


@pytest.mark.e2e
def test_backfill_on_external_postgres(state_dir: Path, fresh_database: Callable[[str], str]) -> None:
    config = StackConfig(
        state_dir=state_dir,
        dags_folder=DAGS,
        python_path=(REPO / "include",),
        airflow_db_uri=fresh_database("flywheel_e2e_smoke"),
        mlflow_db_uri=fresh_database("flywheel_e2e_smoke_mlflow"),
        api_port=_free_port(),
        extra_env={"FLYWHEEL_E2E": "1"},
        preload_modules=(),  # the preload off: the LocalExecutor's own behaviour
    )
    t0 = time.monotonic()
    with LocalStack(config) as stack:
        log.info("stack started in %.1fs", time.monotonic() - t0)
        assert stack.env["FLYWHEEL_E2E"] == "1"
        assert stack.env["FLYWHEEL_MLFLOW_TRACKING_URI"] == config.mlflow_db_uri
        # The to-date is inclusive: 2008-01-01 .. 2012-01-01 are five yearly runs.
        runs = _backfill_and_check(stack, date(2008, 1, 1), date(2012, 1, 1), years=5)
        assert _preloaded_in_task(stack, runs[0]) == "nothing"

        # Clearing a finished run makes the scheduler run all of its tasks again.
        first = stack.dag_runs(DAG_ID)[0]
        again = stack.clear_and_wait(DAG_ID, first.run_id, timeout=300)
        assert again.state == "success"
        assert again.end_date is not None and first.end_date is not None
        assert again.end_date > first.end_date
        t0 = time.monotonic()
    log.info("stack stopped in %.1fs", time.monotonic() - t0)
    assert not list((state_dir / "run").glob("*.pid"))


@pytest.mark.e2e
def test_backfill_on_embedded_postgres(state_dir: Path) -> None:
    # A light module of the library that neither Airflow nor the DAG imports stands in for torch & co.
    config = StackConfig(
        state_dir=state_dir, dags_folder=DAGS, python_path=(REPO / "include",), api_port=_free_port(),
        preload_modules=("driftwheel.decide", "driftwheel_no_such_module"),
    )  # fmt: skip
    with LocalStack(config) as stack:
        runs = _backfill_and_check(stack, date(2008, 1, 1), date(2009, 1, 1), years=2)
        # Imported in the scheduler before it forked its workers, so in every task process; a module
        # that cannot be imported is skipped (the scheduler runs on).
        assert [_preloaded_in_task(stack, run) for run in runs] == ["driftwheel.decide"] * 2
        assert "preloaded 1 modules" in (stack.logs_dir / "scheduler.log").read_text()

        engine = sqlalchemy.create_engine(stack.mlflow_db_uri)
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT current_database()")).scalar() == "mlflow"
        engine.dispose()

        # A manual run has no logical date in Airflow 3; clearing it by run_id still works.
        run_id = stack.trigger(DAG_ID, {"note": "manual"})
        assert stack.wait_for_run(DAG_ID, run_id, timeout=300).state == "success"
        assert stack.clear_and_wait(DAG_ID, run_id, timeout=300).state == "success"
    pgdata = state_dir / "pg"
    assert not (pgdata / "postmaster.pid").exists()

    # A crashed previous run: lock files whose pid is alive but no postmaster (pid reuse).
    alive = os.getpid()
    (pgdata / "postmaster.pid").write_text(f"{alive}\n{pgdata}\n0\n5432\n{pgdata}\n\n0 0\nready\n")
    (pgdata / ".s.PGSQL.5432.lock").write_text(f"{alive}\n")
    (state_dir / "run" / "scheduler.pid").write_text(f"{alive} 0.0\n")
    with LocalStack(config) as stack:
        assert len(stack.dag_runs(DAG_ID)) >= 4  # the history survived the restart
    assert os.getpid() == alive
