"""The flywheel end to end on the real stack.

PostgreSQL (the machine's server on 127.0.0.1:5432) holds Airflow's metadata and MLflow's tracking
store and registry; the Airflow api-server, scheduler and dag-processor run as processes; the
yearly DAG is backfilled over 2008-2020 on the synthetic source through the scheduler. Then one
year is rerun, and a bad batch is triggered from the "UI" path (a run with Params).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from tracks import make_tracks
from driftwheel import registry, report
from driftwheel_ops.local_stack import LocalStack, RunState, StackConfig

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
        extra_env={"FLYWHEEL_STATE_DIR": str(state_dir), "FLYWHEEL_SOURCE": "synthetic", "FLYWHEEL_MODEL_NAME": MODEL, "FLYWHEEL_LAST_YEAR": "2020"},
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
    landing = flywheel.state_dir / "incoming"
    landing.mkdir()
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
    logs = "".join(p.read_text(errors="replace") for p in flywheel.state_dir.rglob("*.log") if "validate_tracks" in str(p))
    assert "tracks_2021.csv: required column 'energy' is missing" in logs
