"""Leakage guards: a year's production error depends on nothing its labels or its row order could leak.

The study this project grew from fed the row index of popularity-sorted search results to its
network and refit its scalers on each test year; these tests fail if anything like that returns.
"""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from tracks import land, make_tracks
from driftwheel import registry, steps, store
from driftwheel.config import DatasetSpec, Settings, TrainingConfig, TrendResidualConfig
from driftwheel.evaluate import rmse
from driftwheel.model import TrendResidualModel, feature_columns, fine_tune_trend_residual, train_trend_residual
from driftwheel.replay import replay

CONFIG = TrainingConfig(trend_residual=TrendResidualConfig(ensemble_size=2, epochs=6, fine_tune_epochs=2))
EVALUATED = 2013


def _year(year: int, seed: int = 0) -> pd.DataFrame:
    """Tracks whose popularity rises by 2 a year and carries a lasting per-artist effect."""
    frame = make_tracks(year, n=300, level=50 + 2 * (year - 2010), seed=seed)
    artist_effect = frame["artist_name"].str.extract(r"(\d+)")[0].astype(int) % 7 - 3
    return frame.assign(popularity=(frame["popularity"] + 2 * artist_effect).clip(0, 100))


@pytest.fixture(scope="module")
def past() -> pd.DataFrame:
    return pd.concat([_year(y, seed=y) for y in (2010, 2011, 2012)], ignore_index=True)


@pytest.fixture(scope="module")
def production_model(past: pd.DataFrame) -> TrendResidualModel:
    return train_trend_residual(past, np.ones(len(past), dtype=bool), feature_columns(DatasetSpec(), past), CONFIG)


def test_permuting_the_evaluated_year_leaves_its_error_unchanged(production_model: TrendResidualModel) -> None:
    evaluated = _year(EVALUATED, seed=99)
    shuffled = evaluated.sample(frac=1.0, random_state=1)
    shuffled.index = range(len(shuffled))  # the row number now points at different tracks
    error = rmse(evaluated["popularity"], production_model.predict(evaluated))
    # Equal up to float32 rounding (a matrix product may sum in another order for another batch).
    assert rmse(shuffled["popularity"], production_model.predict(shuffled)) == pytest.approx(error, abs=1e-6)


def test_the_evaluated_year_labels_reach_no_prediction(production_model: TrendResidualModel) -> None:
    evaluated = _year(EVALUATED, seed=99)
    before = (
        production_model.feature_mean.copy(),
        production_model.history.table.copy(),
        production_model.history.period_means.copy(),
    )
    predictions = production_model.predict(evaluated)
    scrambled = evaluated.assign(popularity=np.random.default_rng(5).integers(0, 100, len(evaluated)))
    np.testing.assert_array_equal(production_model.predict(scrambled), predictions)
    np.testing.assert_array_equal(production_model.predict(evaluated.drop(columns="popularity")), predictions)
    # Predicting refits nothing: scalers, label history and yearly means are as trained.
    np.testing.assert_array_equal(production_model.feature_mean, before[0])
    pd.testing.assert_frame_equal(production_model.history.table, before[1])
    pd.testing.assert_series_equal(production_model.history.period_means, before[2])
    assert EVALUATED not in production_model.history.periods
    # The level is the trend of 2010-2012's means, not 2013's: the +2/year rise is extrapolated.
    level = production_model.level(evaluated["year"])[0]
    assert level == pytest.approx(production_model.history.period_means.iloc[-1] + 2, abs=1.0)
    assert level != pytest.approx(evaluated["popularity"].mean(), abs=1e-6)


def test_training_is_blind_to_row_order(past: pd.DataFrame, production_model: TrendResidualModel) -> None:
    shuffled = past.sample(frac=1.0, random_state=2).set_axis(np.arange(len(past)) * 3)
    retrained = train_trend_residual(
        shuffled, np.ones(len(shuffled), dtype=bool), feature_columns(DatasetSpec(), shuffled), CONFIG
    )
    evaluated = _year(EVALUATED, seed=99)
    np.testing.assert_allclose(retrained.predict(evaluated), production_model.predict(evaluated), rtol=0, atol=1e-6)


def test_a_fine_tune_does_not_see_the_next_year(production_model: TrendResidualModel) -> None:
    """Updating with 2013 and scoring 2014: 2014's labels change nothing."""
    year_2013 = _year(2013, seed=13)
    updated = fine_tune_trend_residual(production_model, year_2013, np.ones(len(year_2013), dtype=bool), CONFIG)
    year_2014 = _year(2014, seed=14)
    scrambled = year_2014.assign(popularity=0)
    np.testing.assert_array_equal(updated.predict(year_2014), updated.predict(scrambled))


def test_the_flywheel_scores_a_period_without_its_labels_or_order(settings: Settings) -> None:
    """Through the DAG's steps: the production error of 2012 is the champion's, whatever order
    2012 lands in, and the champion's predictions ignore 2012's labels."""
    settings = dataclasses.replace(
        settings, training=dataclasses.replace(settings.training, trend_residual=CONFIG.trend_residual)
    )
    evaluated_year = 2012  # the fixture's warm-up ends in 2011
    for year in (2010, 2011):
        land(settings, year, _year(year, seed=year))
    replay(settings, [2010, 2011])

    def score(frame: pd.DataFrame) -> float:
        land(settings, evaluated_year, frame)
        steps.ingest_tracks(settings, evaluated_year)
        steps.validate_tracks(settings, evaluated_year)
        return steps.report_drift(settings, evaluated_year)["production_rmse"]

    evaluated = _year(evaluated_year, seed=99)
    assert score(evaluated.sample(frac=1.0, random_state=4)) == pytest.approx(score(evaluated), abs=1e-6)
    client = registry.connect(settings.tracking_uri)
    champion = registry.load_trained(client, registry.champion_for_period(client, settings.model_name, evaluated_year))
    curated = store.read_partition(settings.curated_dir, evaluated_year)
    np.testing.assert_array_equal(champion.predict(curated), champion.predict(curated.assign(popularity=1)))
