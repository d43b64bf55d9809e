"""The flywheel end to end on the real stack.

PostgreSQL (the machine's server on 127.0.0.1:5432) holds Airflow's metadata and MLflow's tracking
store and registry; the Airflow api-server, scheduler and dag-processor run as processes; the
yearly DAG is backfilled over 2012-2020 on the synthetic source through the scheduler. Then one
year is rerun, and a bad batch is triggered from the "UI" path (a run with Params).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

import badfiles
from awkward import SHAPES, clean_tracks, hashed_id, write_awkward
from browser import browser_executable
from tracks import make_tracks
from driftwheel import registry, report, store
from driftwheel_ops.local_stack import LocalStack, RunState, StackConfig
from driftwheel_ops.preload import DEFAULT_MODULES

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "spotify_flywheel"
MODEL = "spotify_popularity_e2e"
# Three warm-up years (2012-2014, pooled into the cold start), then six scored years: both branches
# and a moving champion need no more. The demo's four earlier warm-up years would only add the same
# ingest-validate-report tasks again (a minute of the suite); the demo's full range is measured by
# benchmarks/orchestration.py.
FIRST, LAST = 2012, 2020
YEARS = list(range(FIRST, LAST + 1))
COLUMN_MAP = "column_map.json"


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
    # Empty (no key: the defaults) until a test writes the map its own files need; read per task.
    (state_dir / COLUMN_MAP).write_text("{}")
    config = StackConfig(
        state_dir=state_dir,
        dags_folder=REPO / "dags",
        plugins_folder=REPO / "plugins",  # the Flywheel menu and the timeline, as `make ui` serves them
        python_path=(REPO / "include",),
        airflow_db_uri=fresh_database("flywheel_e2e_airflow"),
        mlflow_db_uri=fresh_database("flywheel_e2e_mlflow"),
        api_port=_free_port(),
        extra_env={
            "FLYWHEEL_STATE_DIR": str(state_dir),
            "FLYWHEEL_SOURCE": "synthetic",
            "FLYWHEEL_MODEL_NAME": MODEL,
            "FLYWHEEL_FIRST_YEAR": str(FIRST),
            "FLYWHEEL_LAST_YEAR": str(LAST),
            "FLYWHEEL_WARMUP_START": str(FIRST),
            "FLYWHEEL_WARMUP_END": "2014",
            "FLYWHEEL_COLUMN_MAP": str(state_dir / COLUMN_MAP),
            # Retrain on schedule every second year (the default is every year) and on no drift
            # (the synthetic label trends: its distance passes the default 0.1 every year), so that
            # both branches run: a year between two scheduled retrains is skipped.
            "FLYWHEEL_MAX_MODEL_AGE": "2",
            "FLYWHEEL_DRIFT_THRESHOLD": "100",
        },
    )
    with LocalStack(config) as stack:
        stack.wait_for_dag(DAG_ID)
        runs = stack.backfill(DAG_ID, date(FIRST, 1, 1), date(LAST, 1, 1), timeout=2400)
        yield Flywheel(stack, state_dir, runs)
    shutil.rmtree(state_dir, ignore_errors=True)


def test_backfill_runs_every_year_through_the_scheduler(flywheel: Flywheel) -> None:
    assert sorted(r.logical_date.year for r in flywheel.runs) == YEARS
    assert [r.state for r in flywheel.runs] == ["success"] * len(YEARS), flywheel.runs
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
    assert [r.year for r in rows] == YEARS
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
    assert [r.year for r in flywheel.table()] == YEARS  # still one run per period


def test_python_m_driftwheel_report_draws_the_timeline_of_the_backfill(flywheel: Flywheel) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "include"),
        "FLYWHEEL_STATE_DIR": str(flywheel.state_dir),
        "FLYWHEEL_MLFLOW_TRACKING_URI": flywheel.stack.mlflow_db_uri,
    }
    done = subprocess.run(
        [sys.executable, "-m", "driftwheel", "report"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"timeline of {len(YEARS)} periods ({FIRST}-{LAST}):")
    page = (flywheel.state_dir / "reports" / "timeline.html").read_text()
    assert all(f'<tr id="year-{year}">' in page for year in YEARS)
    assert (flywheel.state_dir / "reports" / "timeline.png").read_bytes()[:4] == b"\x89PNG"


def test_the_timeline_page_in_a_browser_shows_every_year_and_its_markers(flywheel: Flywheel) -> None:
    """Headless Chromium on the real api-server's plugin pages, logged in as the Airflow UI is (its cookie)."""
    from playwright.sync_api import sync_playwright

    stack = flywheel.stack
    plugins = stack.api("GET", "/api/v2/plugins")["plugins"]
    views = {v["name"]: v for p in plugins if p["name"] == "flywheel_links" for v in p["external_views"]}
    assert views["Timeline"]["href"] == "/flywheel/timeline"
    assert views["Flywheel year"]["destination"] == "dag_run"  # the tab on each year's run page
    token = stack.api_token(*stack.admin_credentials())
    rows = {r.year: r for r in flywheel.table()}
    last = max(flywheel.runs, key=lambda r: r.logical_date)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_executable(), args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1200})
            context.add_cookies([{"name": "_token", "value": token, "url": stack.api_url}])
            page = context.new_page()
            assert page.goto(f"{stack.api_url}/flywheel/timeline").status == 200
            assert page.locator("h1").inner_text() == "Spotify popularity flywheel: the flywheel over time"
            assert page.locator("#timeline").evaluate("img => img.complete && img.naturalWidth") > 500
            seen = {
                int(year): outcome
                for year, outcome in zip(
                    page.locator("#periods tbody tr td:first-child").all_inner_texts(),
                    page.locator("#periods td.outcome").all_inner_texts(),
                    strict=True,
                )
            }
            assert seen == {year: row.outcome for year, row in rows.items()}
            assert sorted(seen) == YEARS
            assert {"promote", "skip"} <= set(seen.values())
            # FLYWHEEL_TEST_SCREENSHOTS: keep the picture (the README's docs/img/timeline.png is one).
            shots = Path(os.environ.get("FLYWHEEL_TEST_SCREENSHOTS") or flywheel.state_dir)
            assert len(page.screenshot(path=str(shots / "timeline.png"), full_page=True)) > 50_000

            # The tab of the last year's run page: that year's drift report next to the timeline.
            assert page.goto(f"{stack.api_url}/flywheel/runs/{DAG_ID}/{last.run_id}").status == 200
            assert page.locator("tr.highlight td:first-child").inner_text() == "2020"
            page.locator("#drift-report").click()
            page.wait_for_url(f"{stack.api_url}/flywheel/reports/2020")
            assert "Evidently" in page.content() or "Drift" in page.content()
        finally:
            browser.close()


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


def test_the_scenario_param_runs_a_drift_scenario_through_the_scheduler(flywheel: Flywheel) -> None:
    # A user watches a scenario of the drift lab through the real scheduler: the next year, with
    # the scenario Param, lands the scenario's data in a folder of its own and runs every step.
    import json

    from driftwheel import store
    from driftwheel.config import SyntheticConfig
    from driftwheel.sources.synthetic import generate_year

    curated = flywheel.state_dir / "curated"
    last = store.available_periods(curated)[-1]
    year = last if store.in_progress(curated, last) is not None else last + 1  # rerun a failed year
    run_id = flywheel.stack.trigger(DAG_ID, {"year": year, "scenario": "label_sudden"})
    assert flywheel.stack.wait_for_run(DAG_ID, run_id, timeout=900).state == "success"

    landing = flywheel.state_dir / "landing" / "synthetic-label_sudden"
    assert json.loads((landing / "_generator.json").read_text())["scenario"] == "label_sudden"
    landed = pd.read_csv(landing / f"tracks_{year}.csv")
    expected = generate_year(year, SyntheticConfig(scenario="label_sudden"))
    assert (landed["popularity"].to_numpy() == expected["popularity"].to_numpy()).all()
    assert not (flywheel.state_dir / "landing" / "synthetic" / f"tracks_{year}.csv").exists()
    row = next(r for r in flywheel.table() if r.year == year)
    assert row.status == "FINISHED" and row.rows == len(landed)


def test_an_awkward_export_runs_through_the_scheduler_with_its_column_map(flywheel: Flywheel) -> None:
    # A Kaggle-shaped file of 2021 (Latin-1, semicolons, 0-100 features, seconds, no ids, an empty
    # first header, its own column names), read through a column map of documented keys only.
    landing = flywheel.state_dir / "landing" / "kaggle"
    landing.mkdir(parents=True)
    frame = clean_tracks(2021, n=500)
    path, column_map = write_awkward(landing, frame, SHAPES, "top_songs_2021.csv")
    before = badfiles.digest(path)
    map_file = flywheel.state_dir / COLUMN_MAP
    map_file.write_text(json.dumps(column_map))
    try:
        run_id = flywheel.stack.trigger(DAG_ID, {"year": 2021, "source": "file", "landing_dir": str(landing)})
        run = flywheel.stack.wait_for_run(DAG_ID, run_id, timeout=600)
    finally:
        map_file.write_text("{}")
    assert run.state == "success", _task_log(flywheel, run_id, "validate_tracks")[-2000:]
    curated = store.read_partition(flywheel.state_dir / "curated", 2021)
    assert len(curated) == 500
    assert set(curated["track_id"]) == {hashed_id(a, s) for a, s in zip(frame.artist_name, frame.song_name)}
    assert curated["energy"].between(0, 1).all() and sorted(curated["duration_ms"]) == sorted(frame["duration_ms"])
    assert "Beyoncé" in set(curated["artist_name"])
    assert next(r for r in flywheel.table() if r.year == 2021).rows == 500
    assert badfiles.digest(path) == before
