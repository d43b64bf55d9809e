"""The in-process replay: a failed period stops it and ends its MLflow run as FAILED, as in the DAG.

The replay's ordinary path (skip, cold start, transfer, gate, rerun) is exercised by tests/test_steps.py
and tests/test_champion_door.py, which run their periods through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tracks import land, make_tracks
from driftwheel import registry, report, store
from driftwheel.config import Settings
from driftwheel.replay import PeriodOutcome, replay
from driftwheel.validate import BatchRejected


def test_replay_returns_the_table_rows_and_reports_each_period(settings: Settings) -> None:
    for year, level in ((2010, 52), (2011, 52), (2012, 60)):
        land(settings, year, make_tracks(year, n=500, level=level, seed=year))
    outcomes: list[PeriodOutcome] = []
    called: list[str] = []

    def recording(name: str, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        called.append(name)  # a runner sees every step, by its DAG task id (the scale benchmark's hook)
        return function(*args, **kwargs)

    rows = replay(settings, [2010, 2011, 2012], on_period=outcomes.append, run=recording)

    client = registry.connect(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment_name)
    assert rows == report.period_table(client, experiment.experiment_id)  # what `table` and `demo` print
    assert [o.row for o in outcomes] == rows
    cold_start = outcomes[1]
    assert cold_start.decision.retrain and cold_start.challenger is not None and cold_start.gate is not None
    assert cold_start.promotion is not None and cold_start.promotion["promoted"]
    assert cold_start.retrain_seconds is not None and cold_start.drift["champion_version"] is None
    # 2012 is scored by the champion 2011 left, before anything is trained on it.
    assert outcomes[2].drift["champion_version"] == "1" and outcomes[2].drift["production_rmse"] > 0
    # The table's baseline (last year's mean on the whole year) and the gate's held-out size.
    assert rows[0].baseline_rmse is None and rows[2].baseline_rmse is not None and rows[2].baseline_rmse > 0
    assert rows[1].heldout_rows == cold_start.gate["holdout_rows"] > 0
    starts = [i for i, name in enumerate(called) if name == "ingest_tracks"]  # one per period
    cold_start_steps = called[starts[1] : starts[2]]
    assert cold_start_steps == [
        "ingest_tracks", "validate_tracks", "report_drift", "decide_retrain",
        "retrain_model", "evaluate_challenger", "promote_champion", "finish_period",
    ]  # fmt: skip


def test_a_failed_period_stops_the_replay_and_ends_its_mlflow_run_as_failed(settings: Settings) -> None:
    for year in (2010, 2011, 2012):
        land(settings, year, make_tracks(year, n=500, seed=year))
    replay(settings, [2010, 2011])
    land(settings, 2011, make_tracks(2011, n=500).drop(columns="energy"))  # a "fix" of 2011 that breaks it

    with pytest.raises(BatchRejected, match="tracks_2011.csv: required column 'energy' is missing") as raised:
        replay(settings, [2011, 2012])
    assert "replay: period 2011 failed in validate_tracks" in raised.value.__notes__
    assert not store.has_partition(settings.curated_dir, 2012)  # the replay stopped at 2011

    client = registry.connect(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment_name).experiment_id
    run = client.get_run(report.find_period_run(client, experiment, 2011))
    assert run.info.status == "FAILED"
    assert run.data.tags["flywheel.failure"].startswith("validate_tracks failed: tracks_2011.csv")
