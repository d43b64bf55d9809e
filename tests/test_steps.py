"""The flywheel's steps on tiny data against a real MLflow tracking store and registry (SQLite).

The same steps run under the Airflow scheduler and PostgreSQL in tests/e2e.
"""

import dataclasses
import hashlib
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tracks import land, make_tracks
from driftwheel import evaluate, registry, steps, store
from driftwheel.replay import replay
from driftwheel.config import Settings
from driftwheel.validate import BatchRejected


@pytest.fixture
def flywheel(settings: Settings) -> Settings:
    land(settings, 2010, make_tracks(2010, n=500, level=52, seed=1))
    land(settings, 2011, make_tracks(2011, n=500, level=52))
    land(settings, 2012, make_tracks(2012, n=500, level=52, seed=3))
    land(settings, 2013, make_tracks(2013, n=500, level=62))
    # Drift-triggered only (no retrain schedule), so that the stable 2012 is skipped.
    return dataclasses.replace(settings, drift=dataclasses.replace(settings.drift, max_model_age=None))


def _versions(settings: Settings) -> list[str]:
    client = registry.connect(settings.tracking_uri)
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{settings.model_name}'"))


@pytest.mark.parametrize(("strategy", "first_strategy"), [("trend_residual", "trend_residual"), ("transfer", "full")])
def test_warm_up_cold_start_skip_and_transfer(
    flywheel: Settings, strategy: str, first_strategy: str, tmp_path: Path
) -> None:
    flywheel = dataclasses.replace(flywheel, training=dataclasses.replace(flywheel.training, strategy=strategy))
    global_uri = mlflow.get_tracking_uri()
    rows = replay(flywheel, [2010, 2011, 2012, 2013])
    # The steps pass their client down: MLflow's process-global URIs are left as they were.
    assert mlflow.get_tracking_uri() == global_uri != flywheel.tracking_uri
    assert [r.decision for r in rows] == ["skip", "retrain", "skip", "retrain"]
    assert [r.promoted for r in rows] == [False, True, False, True]
    assert [r.champion_version for r in rows] == [None, "1", "1", "2"]
    # 2013's level jumped: the champion's production error showed it before retraining.
    assert rows[3].production_rmse > rows[3].challenger_rmse + 3

    client = registry.connect(flywheel.tracking_uri)
    first, second = (
        client.get_model_version(flywheel.model_name, "1"),
        client.get_model_version(flywheel.model_name, "2"),
    )
    assert first.tags[registry.T_TRAINING_PERIODS] == "2010,2011" and first.tags[registry.T_STRATEGY] == first_strategy
    assert second.tags[registry.T_STRATEGY] == strategy and second.tags[registry.T_PARENT] == "1"
    assert second.tags[registry.T_PREVIOUS_CHAMPION] == "1"
    # The gate's evidence, on the version, the period's run and the per-year table.
    held_out = int(second.tags["flywheel.gate.holdout_rows"])
    assert held_out >= 50 and second.tags["flywheel.gate.rule"] == "champion"
    low, high = (
        float(second.tags["flywheel.gate.vs_champion_low"]),
        float(second.tags["flywheel.gate.vs_champion_high"]),
    )
    assert low <= float(second.tags["flywheel.gate.vs_champion"]) <= high < 0
    run = client.get_run(client.search_runs([client.get_experiment_by_name(flywheel.experiment_name).experiment_id],
                                            filter_string="tags.`flywheel.period` = '2013'")[0].info.run_id)  # fmt: skip
    assert run.data.metrics["holdout_rows"] == held_out and run.data.metrics["vs_champion_high"] == pytest.approx(
        high, abs=1e-3
    )
    assert run.data.tags["flywheel.gate_rule"] == "champion" and run.data.tags["flywheel.decision_rule"] != ""
    assert rows[3].gate_difference is not None and rows[3].gate_difference[2] == pytest.approx(high, abs=1e-3)
    assert rows[2].decision_rule == "stable" and rows[1].decision_rule == "cold_start"

    # The registered champion predicts from a DataFrame of raw features (extra columns ignored).
    version = client.get_model_version_by_alias(flywheel.model_name, "champion")
    source = client.get_model_version_download_uri(flywheel.model_name, version.version)
    champion = mlflow.pyfunc.load_model(
        mlflow.artifacts.download_artifacts(source, dst_path=str(tmp_path), tracking_uri=flywheel.tracking_uri)
    )
    predictions = champion.predict(make_tracks(2013, n=20, level=62, seed=9))
    assert len(predictions) == 20 and 50 < float(pd.Series(predictions).mean()) < 75


def test_rerun_of_a_period_reuses_its_version_and_scores_the_model_it_had(flywheel: Settings) -> None:
    replay(flywheel, [2010, 2011, 2012, 2013])
    before = _versions(flywheel)
    (again,) = replay(flywheel, [2013])
    assert _versions(flywheel) == before
    assert again.champion_version == "2"
    client = registry.connect(flywheel.tracking_uri)
    # Rerunning 2013 scores v1 (production when 2013 arrived), never v2, which saw 2013's labels.
    assert str(registry.champion_for_period(client, flywheel.model_name, 2013).version) == "1"
    runs = client.search_runs([client.get_experiment_by_name(flywheel.experiment_name).experiment_id])
    assert sorted(r.data.tags["flywheel.period"] for r in runs) == ["2010", "2011", "2012", "2013"]


def test_a_knob_of_another_model_family_does_not_retrain_the_model(flywheel: Settings) -> None:
    """FLYWHEEL_EPOCHS sets the study net's epochs: the default model trained from the same data is
    found again, not registered twice; the study net's own epochs do make a new version."""
    replay(flywheel, [2010, 2011])
    run_id = steps.report_drift(flywheel, 2011)["mlflow_run_id"]

    def with_study_epochs(strategy: str, epochs: int) -> Settings:
        study_net = dataclasses.replace(flywheel.training.study_net, epochs=epochs)
        return dataclasses.replace(
            flywheel, training=dataclasses.replace(flywheel.training, strategy=strategy, study_net=study_net)
        )

    default = steps.retrain_model(with_study_epochs("trend_residual", 3), 2011, run_id)
    assert (default["version"], default["reused"]) == ("1", True)
    first = steps.retrain_model(with_study_epochs("full", 3), 2011, run_id)
    again = steps.retrain_model(with_study_epochs("full", 3), 2011, run_id)
    other = steps.retrain_model(with_study_epochs("full", 4), 2011, run_id)
    assert (first["reused"], again["reused"], other["reused"]) == (False, True, False)
    assert again["version"] == first["version"] != other["version"]


def test_gate_rejects_a_worse_challenger_and_keeps_the_champion(flywheel: Settings) -> None:
    replay(flywheel, [2010, 2011])
    # A forced retrain with a learning rate far too high yields a challenger worse than the champion.
    reckless = dataclasses.replace(
        flywheel.training,
        trend_residual=dataclasses.replace(
            flywheel.training.trend_residual, fine_tune_learning_rate=0.5, weight_decay=0.0
        ),
    )
    (row,) = replay(dataclasses.replace(flywheel, force_retrain=True, training=reckless), [2012])
    assert row.decision == "retrain" and row.promoted is False
    assert row.challenger_rmse > row.production_rmse
    client = registry.connect(flywheel.tracking_uri)
    assert str(registry.champion(client, flywheel.model_name).version) == "1"
    assert client.get_model_version(flywheel.model_name, "2").tags[registry.T_STATUS] == "rejected"


def test_bad_batch_is_rejected_and_nothing_is_lost(flywheel: Settings) -> None:
    replay(flywheel, [2010, 2011])
    bad = make_tracks(2012, n=500).drop(columns="energy")
    path = land(flywheel, 2012, bad)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    steps.ingest_tracks(flywheel, 2012)
    with pytest.raises(BatchRejected, match=r"tracks_2012.csv: required column 'energy' is missing"):
        steps.validate_tracks(flywheel, 2012)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert not store.has_partition(flywheel.curated_dir, 2012)
    client = registry.connect(flywheel.tracking_uri)
    assert str(registry.champion(client, flywheel.model_name).version) == "1" and _versions(flywheel) == ["1"]


def test_the_gate_judges_the_champion_on_the_predictions_report_drift_kept(flywheel: Settings) -> None:
    replay(flywheel, [2010, 2011])
    forced = dataclasses.replace(flywheel, force_retrain=True)
    steps.ingest_tracks(forced, 2012)
    steps.validate_tracks(forced, 2012)
    summary = steps.report_drift(forced, 2012)
    assert summary["champion_version"] == "1"
    current = store.read_partition(forced.curated_dir, 2012)
    (kept,) = (forced.state_dir / "scores" / "year=2012").glob("champion-v1-*.parquet")
    predictions = pd.read_parquet(kept)["prediction"].to_numpy()
    assert evaluate.rmse(current["popularity"], predictions) == summary["production_rmse"]

    # The champion scores the period once: the gate reads what report_drift kept (here replaced
    # by a constant, so a second scoring would show).
    store.write_frame(pd.DataFrame({"prediction": [0.0] * len(current)}), kept)
    challenger = steps.retrain_model(forced, 2012, summary["mlflow_run_id"], "1")
    gate = steps.evaluate_challenger(forced, 2012, summary["mlflow_run_id"], challenger["version"], "1")
    held_out = evaluate.holdout_mask(current[forced.dataset.id_column], forced.gate.holdout_fraction)
    assert gate["champion_rmse"] == evaluate.rmse(current["popularity"][held_out], [0.0] * int(held_out.sum()))
