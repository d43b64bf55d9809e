"""The flywheel end to end on the real stack.

PostgreSQL (the machine's server on 127.0.0.1:5432) holds Airflow's metadata and MLflow's tracking
store and registry; the Airflow api-server, scheduler and dag-processor run as processes; the
yearly DAG is backfilled over 2008-2020 on the synthetic source through the scheduler. Then one
year is rerun, and a bad batch is triggered from the "UI" path (a run with Params).
"""

from __future__ import annotations

import hashlib
import math
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

import badfiles
from tracks import make_tracks
from driftwheel import registry, report
from driftwheel_ops.local_stack import LocalStack, RunState, StackConfig
from driftwheel_ops.preload import DEFAULT_MODULES

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "spotify_flywheel"
MODEL = "spotify_popularity_e2e"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Flywheel:
    stack: LocalStack
    state_dir: Path
    runs: list[RunState]

    @property
    def client(self):  # noqa: ANN201 - an MlflowClient
        return registry.connect(self.stack.mlflow_db_uri)

    def table(self) -> list[report.PeriodRow]:
        experiment = self.client.get_experiment_by_name("driftwheel")
        return report.period_table(self.client, experiment.experiment_id)

    def versions(self) -> list[str]:
        return sorted(str(v.version) for v in self.client.search_model_versions(f"name = '{MODEL}'"))


@pytest.fixture(scope="module")
def flywheel(fresh_database: Callable[[str], str]) -> Iterator[Flywheel]:
    state_dir = Path(tempfile.mkdtemp(prefix="fw-e2e-", dir="/tmp"))
    config = StackConfig(
        state_dir=state_dir,
        dags_folder=REPO / "dags",
        python_path=(REPO / "include",),
        airflow_db_uri=fresh_database("flywheel_e2e_airflow"),
        mlflow_db_uri=fresh_database("flywheel_e2e_mlflow"),
        api_port=_free_port(),
        extra_env={
            "FLYWHEEL_STATE_DIR": str(state_dir),
            "FLYWHEEL_SOURCE": "synthetic",
            "FLYWHEEL_MODEL_NAME": MODEL,
            "FLYWHEEL_LAST_YEAR": "2020",
        },
    )
    with LocalStack(config) as stack:
        stack.wait_for_dag(DAG_ID)
        runs = stack.backfill(DAG_ID, date(2008, 1, 1), date(2020, 1, 1), timeout=2400)
        yield Flywheel(stack, state_dir, runs)
    shutil.rmtree(state_dir, ignore_errors=True)


def test_backfill_runs_every_year_through_the_scheduler(flywheel: Flywheel) -> None:
    assert sorted(r.logical_date.year for r in flywheel.runs) == list(range(2008, 2021))
    assert [r.state for r in flywheel.runs] == ["success"] * 13, flywheel.runs
    assert all(r.run_id.startswith("backfill__") for r in flywheel.runs)


def test_every_task_ran_forked_from_a_scheduler_that_preloaded_the_libraries(flywheel: Flywheel) -> None:
    # The backfill above succeeded with every task forked from workers that had torch, mlflow,
    # evidently and the library imported (driftwheel_ops.preload), none failing to import.
    scheduler_log = (flywheel.stack.logs_dir / "scheduler.log").read_text()
    assert flywheel.stack.env["AIRFLOW__CORE__EXECUTOR"].endswith("PreloadingLocalExecutor")
    assert f"preloaded {len(DEFAULT_MODULES)} modules" in scheduler_log
    assert "preload: could not import" not in scheduler_log


def test_the_flywheel_retrains_skips_and_moves_the_champion(flywheel: Flywheel) -> None:
    rows = flywheel.table()
    print("\n" + report.format_table(rows))
    assert [r.year for r in rows] == list(range(2008, 2021))
    after_warmup = [r for r in rows if r.year > 2014]
    assert any(r.decision == "retrain" for r in after_warmup)
    assert any(r.decision == "skip" for r in after_warmup)
    champions = [r.champion_version for r in rows if r.champion_version]
    assert len(set(champions)) >= 2, "the champion alias never moved"
    current = registry.champion(flywheel.client, MODEL)
    assert str(current.version) == rows[-1].champion_version
    # Every later year was scored by a champion before its labels were used.
    assert all(r.production_rmse is not None for r in rows if r.year > 2014)
    # Every task of a skipping year ran the skip branch; every retrain year ran the gate.
    for run in flywheel.runs:
        states = flywheel.stack.task_states(DAG_ID, run.run_id)
        assert states["finish_period"] == "success"
        assert (states["skip_retrain"] == "success") != (states["retrain_model"] == "success")


def test_rerunning_a_year_adds_no_model_version(flywheel: Flywheel) -> None:
    before = flywheel.versions()
    champion_before = str(registry.champion(flywheel.client, MODEL).version)
    last = max(flywheel.runs, key=lambda r: r.logical_date)
    rerun = flywheel.stack.clear_and_wait(DAG_ID, last.run_id, timeout=900)
    assert rerun.state == "success"
    assert flywheel.versions() == before
    assert str(registry.champion(flywheel.client, MODEL).version) == champion_before
    assert [r.year for r in flywheel.table()] == list(range(2008, 2021))  # still one run per period


def test_a_bad_batch_fails_the_run_and_leaves_the_champion(flywheel: Flywheel) -> None:
    landing = flywheel.state_dir / "landing" / "incoming"  # inside the default landing root
    landing.mkdir(parents=True)
    bad = landing / "tracks_2021.csv"
    make_tracks(2021, n=300).drop(columns="energy").to_csv(bad, index=False)
    digest = hashlib.sha256(bad.read_bytes()).hexdigest()
    champion_before = str(registry.champion(flywheel.client, MODEL).version)
    versions_before = flywheel.versions()

    run_id = flywheel.stack.trigger(DAG_ID, {"year": 2021, "source": "file", "landing_dir": str(landing)})
    run = flywheel.stack.wait_for_run(DAG_ID, run_id, timeout=600)

    assert run.state == "failed"
    states = flywheel.stack.task_states(DAG_ID, run_id)
    assert states["ingest_tracks"] == "success" and states["validate_tracks"] == "failed"
    assert states["retrain_model"] != "success" and states["promote_champion"] != "success"
    assert str(registry.champion(flywheel.client, MODEL).version) == champion_before
    assert flywheel.versions() == versions_before
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == digest
    logs = "".join(
        p.read_text(errors="replace") for p in flywheel.state_dir.rglob("*.log") if "validate_tracks" in str(p)
    )
    assert "tracks_2021.csv: required column 'energy' is missing" in logs


def _task_log(flywheel: Flywheel, run_id: str, task_id: str) -> str:
    logs = flywheel.state_dir / "airflow" / "logs"
    text = "".join(
        p.read_text(errors="replace")
        for p in logs.rglob("*.log")
        if run_id in str(p) and f"task_id={task_id}" in str(p)
    )
    return text.replace('\\"', '"')  # task logs are JSON lines: quotes inside messages are escaped


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        # A form user set max_bad_share 1.0 and 1,000 rows with popularity 500 were curated.
        ({"year": 2021, "max_bad_share": 1.0}, "run parameters 'max_bad_share' are not declared by the DAG"),
        # landing_dir read any folder the worker could read.
        (
            {"year": 2021, "source": "file", "landing_dir": "/etc"},
            "landing_dir /etc is outside the allowed landing roots",
        ),
        # A manual run for 2030 was promoted, then blocked every later promotion.
        ({"year": 2030}, "period 2030 is beyond the next period: the flywheel has processed up to"),
    ],
    ids=["undeclared-param", "landing-dir-outside-roots", "period-beyond-the-next"],
)
def test_refused_runs_fail_at_once_and_touch_nothing(flywheel: Flywheel, conf: dict, message: str) -> None:
    champion_before = str(registry.champion(flywheel.client, MODEL).version)
    versions_before = flywheel.versions()
    run_id = flywheel.stack.trigger(DAG_ID, conf)
    run = flywheel.stack.wait_for_run(DAG_ID, run_id, timeout=300)
    assert run.state == "failed"
    states = flywheel.stack.task_states(DAG_ID, run_id)
    assert states["ingest_tracks"] == "failed" and states["validate_tracks"] != "success"
    assert message in _task_log(flywheel, run_id, "ingest_tracks")
    assert str(registry.champion(flywheel.client, MODEL).version) == champion_before
    assert flywheel.versions() == versions_before
    assert not (flywheel.state_dir / "curated" / "year=2030").exists()


def test_a_failed_year_ends_its_mlflow_run_as_failed(flywheel: Flywheel) -> None:
    # The drift report of 2021 cannot be written (a file stands where its folder goes): the task
    # fails after the period's MLflow run was opened; the run must not stay RUNNING for ever.
    blocker = flywheel.state_dir / "reports" / "year=2021"
    shutil.rmtree(blocker, ignore_errors=True)
    blocker.write_text("not a folder")
    try:
        run_id = flywheel.stack.trigger(DAG_ID, {"year": 2021})
        run = flywheel.stack.wait_for_run(DAG_ID, run_id, timeout=600)
    finally:
        blocker.unlink()
    assert run.state == "failed"
    assert flywheel.stack.task_states(DAG_ID, run_id)["report_drift"] == "failed"
    period_runs = flywheel.client.search_runs(
        [flywheel.client.get_experiment_by_name("driftwheel").experiment_id], "tags.`flywheel.period` = '2021'"
    )
    assert [r.info.status for r in period_runs] == ["FAILED"]
    assert "report_drift failed" in period_runs[0].data.tags["flywheel.failure"]

    # The next year does not start on top of the failed one (nor beside a year still running, as a
    # manual run triggered during a backfill did): refused at once, naming the year to rerun.
    refused = flywheel.stack.trigger(DAG_ID, {"year": 2022})
    assert flywheel.stack.wait_for_run(DAG_ID, refused, timeout=300).state == "failed"
    assert "period 2021 has not finished" in _task_log(flywheel, refused, "ingest_tracks")
    assert not (flywheel.state_dir / "curated" / "year=2022").exists()


def test_the_rollback_dag_restores_the_previous_champion_through_the_door(flywheel: Flywheel) -> None:
    current = registry.champion(flywheel.client, MODEL)
    previous = current.tags[registry.T_PREVIOUS_CHAMPION]
    run_id = flywheel.stack.trigger("rollback_champion", {"reason": "e2e: the champion misbehaves"})
    assert flywheel.stack.wait_for_run("rollback_champion", run_id, timeout=300).state == "success"
    assert str(registry.champion(flywheel.client, MODEL).version) == previous
    from driftwheel import ledger

    last = ledger.entries(flywheel.client, "driftwheel-ledger", MODEL)[-1]
    assert (last.action, last.from_version, last.to_version) == ("rollback", str(current.version), previous)
    assert last.reason == "e2e: the champion misbehaves"
    # A version that never was champion (here: none at all) cannot be restored from the form either.
    refused = flywheel.stack.trigger("rollback_champion", {"reason": "sneak past the gate", "to_version": 9999})
    assert flywheel.stack.wait_for_run("rollback_champion", refused, timeout=300).state == "failed"
    assert "has no version 9999" in _task_log(flywheel, refused, "rollback_champion")
    assert str(registry.champion(flywheel.client, MODEL).version) == previous


@pytest.mark.parametrize(
    ("writer", "message"),
    [
        (badfiles.write_latin1_csv, '"encoding": "latin-1"'),
        (badfiles.write_semicolon_csv, '"delimiter": ";"'),
    ],
    ids=["latin-1", "semicolons"],
)
def test_an_unreadable_landing_file_fails_once_by_name_without_retry(flywheel: Flywheel, writer, message: str) -> None:
    landing = flywheel.state_dir / "landing" / f"unreadable-{writer.__name__}"
    landing.mkdir(parents=True)
    path = writer(landing, make_tracks(2021, n=300), "tracks_2021.csv")
    before = badfiles.digest(path)
    champion_before = str(registry.champion(flywheel.client, MODEL).version)
    run_id = flywheel.stack.trigger(DAG_ID, {"year": 2021, "source": "file", "landing_dir": str(landing)})
    run = flywheel.stack.wait_for_run(DAG_ID, run_id, timeout=300)
    assert run.state == "failed"
    log = _task_log(flywheel, run_id, "ingest_tracks")
    assert "tracks_2021.csv" in log and message in log
    # A deterministic data error is not retried as if it were transient: one attempt only.
    assert sorted(
        p.name
        for p in (flywheel.state_dir / "airflow" / "logs").rglob("attempt=*.log")
        if run_id in str(p) and "task_id=ingest_tracks" in str(p)
    ) == ["attempt=1.log"]
    assert badfiles.digest(path) == before
    assert str(registry.champion(flywheel.client, MODEL).version) == champion_before


def test_non_finite_values_are_quarantined_and_never_reach_a_model(flywheel: Flywheel) -> None:
    # The finding: 30 rows with tempo = inf (1.5 % of a year) passed validation, the champion's
    # production RMSE became NaN and a model predicting NaN for every row was promoted.
    landing = flywheel.state_dir / "landing" / "inf-tempo"
    landing.mkdir(parents=True)
    frame = make_tracks(2021, n=2000, level=70)
    frame.loc[:29, "tempo"] = float("inf")
    path = badfiles.write_csv(landing, frame, "tracks_2021.csv")
    before = badfiles.digest(path)
    run_id = flywheel.stack.trigger(
        DAG_ID, {"year": 2021, "source": "file", "landing_dir": str(landing), "force_retrain": True}
    )
    assert flywheel.stack.wait_for_run(DAG_ID, run_id, timeout=900).state == "success"
    quarantined = flywheel.state_dir / "quarantine" / "year=2021" / "rejected_rows.csv"
    assert len(pd.read_csv(quarantined)) == 30
    row = next(r for r in flywheel.table() if r.year == 2021)
    assert row.rows == 1970 and math.isfinite(row.production_rmse)
    assert row.challenger_rmse is None or math.isfinite(row.challenger_rmse)
    assert badfiles.digest(path) == before
