"""The champion only gets better, through one door: the steps on tiny data and a real MLflow registry.

Each finding of the reliability review has a test here (the promotion race itself, across
processes on PostgreSQL, is in tests/e2e/test_promotion_race.py).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tracks import land, make_tracks
from driftwheel import ledger, registry, steps, store
from driftwheel import model as model_lib
from driftwheel.config import Settings, StudyNetConfig
from driftwheel.replay import replay

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def flywheel(settings: Settings) -> Settings:
    """2010-2012 landed; 2010 (warm-up) and 2011 (cold start, champion v1) have run."""
    for year, level, seed in ((2010, 52, 1), (2011, 52, 0), (2012, 55, 3)):
        land(settings, year, make_tracks(year, n=500, level=level, seed=seed))
    replay(settings, [2010, 2011])
    return settings


def _client(settings: Settings):  # noqa: ANN202 - an MlflowClient
    return registry.connect(settings.tracking_uri)


def _champion(settings: Settings) -> str:
    return str(registry.champion(_client(settings), settings.model_name).version)


def _statuses(settings: Settings) -> dict[str, str | None]:
    versions = _client(settings).search_model_versions(f"name = '{settings.model_name}'")
    return {str(v.version): v.tags.get(registry.T_STATUS) for v in versions}


def _start_2012(settings: Settings) -> tuple[str, str]:
    steps.ingest_tracks(settings, 2012)
    steps.validate_tracks(settings, 2012)
    summary = steps.report_drift(settings, 2012)
    return summary["mlflow_run_id"], summary["champion_version"]


def test_a_model_predicting_non_finite_values_is_never_registered(
    flywheel: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id, champion = _start_2012(flywheel)

    def nan_predictions(
        self: model_lib.TrendResidualModel, frame: pd.DataFrame, rows: np.ndarray | None = None
    ) -> np.ndarray:
        return np.full(len(frame) if rows is None else int(np.count_nonzero(rows)), np.nan)

    monkeypatch.setattr(model_lib.TrendResidualModel, "predict", nan_predictions)
    challenger = steps.retrain_model(flywheel, 2012, run_id, champion)
    assert challenger["version"] is None and "non-finite values for" in challenger["refused"]
    gate = steps.evaluate_challenger(flywheel, 2012, run_id, None, champion, challenger["refused"])
    assert not gate["passed"] and "no challenger" in gate["reason"]
    assert list(_statuses(flywheel)) == ["1"] and _champion(flywheel) == "1"


def test_a_tiny_batch_is_not_trained_on_even_when_forced(flywheel: Settings) -> None:
    land(flywheel, 2012, make_tracks(2012, n=5, level=55))
    (row,) = replay(dataclasses.replace(flywheel, force_retrain=True), [2012])
    assert row.decision == "skip" and not row.promoted
    assert list(_statuses(flywheel)) == ["1"]


def test_a_period_beyond_the_next_one_is_refused_before_it_touches_anything(flywheel: Settings) -> None:
    land(flywheel, 2030, make_tracks(2030, n=500, level=60))
    with pytest.raises(steps.PeriodRefused, match="period 2030 is beyond the next period.*run 2012 first"):
        replay(flywheel, [2030])
    assert not (flywheel.curated_dir / "year=2030").exists()
    assert _champion(flywheel) == "1"
    replay(flywheel, [2011])  # a rerun of a processed period is fine


def test_the_next_period_waits_for_the_previous_one_to_finish(flywheel: Settings) -> None:
    # The finding: a manual run triggered during a backfill ran beside it (Airflow's max_active_runs
    # does not count the backfill's runs), promoted first and locked the earlier year out.
    land(flywheel, 2013, make_tracks(2013, n=500, level=58, seed=4))
    steps.ingest_tracks(flywheel, 2012, run="backfill__2012-01-01T00:00:00+00:00")
    steps.validate_tracks(flywheel, 2012)  # 2012 is mid-run: curated, not finished
    with pytest.raises(
        steps.PeriodRefused, match=r"period 2012 has not finished \(its run backfill__2012.*rerun 2012 first, then 2013"
    ):
        steps.ingest_tracks(flywheel, 2013, run="manual__2013")
    assert not (flywheel.curated_dir / "year=2013").exists() and _champion(flywheel) == "1"
    replay(flywheel, [2012])  # the backfill's run of 2012 goes on and finishes
    replay(flywheel, [2013])
    assert not list(flywheel.curated_dir.rglob(store.IN_PROGRESS))


def test_a_failed_period_blocks_the_next_one_until_it_is_rerun(flywheel: Settings) -> None:
    run_id, _ = _start_2012(flywheel)
    steps.fail_period(flywheel, 2012, "retrain_model failed: out of memory")
    land(flywheel, 2013, make_tracks(2013, n=500, level=58, seed=4))
    with pytest.raises(steps.PeriodRefused, match="period 2012 has not finished"):
        steps.ingest_tracks(flywheel, 2013)
    replay(flywheel, [2012])  # the documented fix: rerun the failed period, then go on
    assert [row.year for row in replay(flywheel, [2013])] == [2013]


def test_a_refused_run_leaves_the_finished_run_of_its_period_as_it_was(flywheel: Settings) -> None:
    # A rerun of 2011 refused at ingest (say, undeclared Params) fails its task; the DAG's failure
    # callback must not turn 2011's finished period run into a failed one.
    steps.fail_period(flywheel, 2011, "ingest_tracks failed: run parameters 'x' are not declared")
    client = _client(flywheel)
    experiment = client.get_experiment_by_name(flywheel.experiment_name).experiment_id
    runs = client.search_runs([experiment], "tags.`flywheel.period` = '2011'")
    assert [r.info.status for r in runs] == ["FINISHED"] and "flywheel.failure" not in runs[0].data.tags


def _bad_challenger(settings: Settings, run_id: str) -> str:
    """A registered model far worse than anything the flywheel trains (an untrained study net)."""
    reckless = dataclasses.replace(
        settings.training, strategy="full", study_net=StudyNetConfig(epochs=1, learning_rate=1e-6)
    )
    version = steps.retrain_model(dataclasses.replace(settings, training=reckless), 2012, run_id, None)["version"]
    assert version is not None
    return str(version)


@pytest.mark.parametrize("first", ["worse", "better"])
def test_racing_promotions_end_with_the_better_model_whatever_the_order(flywheel: Settings, first: str) -> None:
    # The finding: two promotions at once both reported "promoted", and the worse model (RMSE 9.9
    # vs 5.0) ended as champion in 2 of 6 trials. Both racers passed the gate against v1.
    run_id, champion = _start_2012(flywheel)
    good = steps.retrain_model(flywheel, 2012, run_id, champion)["version"]
    bad = _bad_challenger(flywheel, run_id)
    order = [bad, good] if first == "worse" else [good, bad]
    results = [
        steps.promote_champion(flywheel, run_id, version, period=2012, gated_against=champion) for version in order
    ]
    assert _champion(flywheel) == good
    assert list(_statuses(flywheel).values()).count("champion") == 1
    assert results[1]["promoted"] is (first == "worse")
    actions = [e.action for e in steps.history(flywheel) if e.period == 2012]
    if first == "worse":
        assert actions == ["promote", "refused", "promote"]  # the better one was gated again and won
    else:
        assert actions == ["promote", "refused", "reject"]  # the worse one lost its second gate
        assert "gated again against v" in steps.history(flywheel)[-1].reason


def test_a_rerun_appends_to_the_history_and_never_rewrites_it(flywheel: Settings) -> None:
    (first,) = replay(dataclasses.replace(flywheel, force_retrain=True), [2012])
    assert first.promoted
    (again,) = replay(flywheel, [2012])  # the same inputs: the same version, already champion
    assert again.promoted, "the table must still say 2012 promoted"
    promotions = [e for e in steps.history(flywheel) if e.action == "promote"]
    assert [e.period for e in promotions] == [2011, 2012]


def test_a_failed_period_ends_its_mlflow_run_as_failed(flywheel: Settings) -> None:
    run_id, _ = _start_2012(flywheel)
    steps.fail_period(flywheel, 2012, "retrain_model failed: out of memory")
    run = _client(flywheel).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["flywheel.failure"].startswith("retrain_model failed")


def test_kill_9_while_registering_leaves_no_orphan_and_the_retry_reuses_the_version(
    flywheel: Settings, tmp_path: Path
) -> None:
    run_id, champion = _start_2012(flywheel)
    pickled = tmp_path / "settings.pickle"
    pickled.write_bytes(pickle.dumps(flywheel))
    code = (
        "import pickle, sys; from driftwheel import steps;"
        f"steps.retrain_model(pickle.load(open({str(pickled)!r}, 'rb')), 2012, {run_id!r}, {champion!r})"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'include'}:{REPO / 'tests'}"}
    task = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    client = _client(flywheel)
    deadline = time.monotonic() + 180
    while not client.search_model_versions(f"name = '{flywheel.model_name}' and version_number > 1"):
        assert task.poll() is None, "the task ended before it registered anything"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(task.pid, signal.SIGKILL)  # the moment the version exists
    task.wait()
    orphan = client.get_model_version(flywheel.model_name, "2")
    assert orphan.tags.get(registry.T_FINGERPRINT), "a version exists without its fingerprint"

    retry = steps.retrain_model(flywheel, 2012, run_id, champion)
    assert retry == {**retry, "version": "2", "reused": True}
    assert sorted(_statuses(flywheel)) == ["1", "2"]


def test_history_lists_promotions_and_rejections_in_order(flywheel: Settings) -> None:
    entries = steps.history(flywheel)
    assert [(e.action, e.period, e.to_version) for e in entries] == [("promote", 2011, "1")]
    text = ledger.format_entries(entries)
    assert "| promote | 2011 | - | v1 |" in text
