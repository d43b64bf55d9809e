"""Training plans: one planner per model family, chosen by strategy; fingerprints of their inputs."""

import dataclasses
import hashlib
import json

import pandas as pd
import pytest

from tracks import land, make_tracks
from driftwheel import planners, steps, store
from driftwheel.config import Settings


def test_every_strategy_has_its_family_planner() -> None:
    assert planners.PLANNERS == {
        "trend_residual": planners.plan_trend_residual,
        "transfer": planners.plan_study_net,
        "full": planners.plan_study_net,
    }


def test_an_unknown_strategy_is_named(settings: Settings) -> None:
    # The settings model refuses it when it is built, before any planner is looked up.
    with pytest.raises(ValueError, match="boosting"):
        dataclasses.replace(settings.training, strategy="boosting")
    assert set(planners.PLANNERS) == {"trend_residual", "transfer", "full"}


def test_fingerprint_follows_the_rows_and_the_inputs() -> None:
    rows = pd.DataFrame({"id": ["a", "b"], "popularity": [1.0, 2.0]})
    same = planners.fingerprint(rows, period=2012, strategy="full")
    assert planners.fingerprint(rows.copy(), period=2012, strategy="full") == same
    assert planners.fingerprint(rows.assign(popularity=[1.0, 3.0]), period=2012, strategy="full") != same
    assert planners.fingerprint(rows, period=2013, strategy="full") != same


def test_fingerprint_hashed_in_slices_is_the_fingerprint_of_the_whole_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = pd.concat([make_tracks(2011, n=50), make_tracks(2012, n=47)], ignore_index=True)
    fit = rows.index.to_numpy() % 3 != 0
    whole = planners.fingerprint(rows, extra={"_fit": fit}, period=2012)
    monkeypatch.setattr(planners, "HASH_BATCH_ROWS", 10)  # 97 rows in 10 slices
    assert planners.fingerprint(rows, extra={"_fit": fit}, period=2012) == whole
    assert planners.fingerprint(rows, extra={"_fit": ~fit}, period=2012) != whole
    # The digest a version was registered under before slicing: pandas' wrapping sum of all row hashes.
    at_once = int(pd.util.hash_pandas_object(rows.assign(_fit=fit), index=False).sum()) & (2**63 - 1)
    payload = json.dumps({"data": at_once, "period": 2012}, sort_keys=True, default=str)
    assert whole == hashlib.sha256(payload.encode()).hexdigest()[:32]


@pytest.mark.parametrize(("strategy", "planned"), [("trend_residual", "trend_residual"), ("transfer", "full")])
def test_a_cold_start_plans_from_scratch_on_the_warm_up_periods(
    settings: Settings, strategy: str, planned: str
) -> None:
    settings = dataclasses.replace(settings, training=dataclasses.replace(settings.training, strategy=strategy))
    for year in (2010, 2011):
        land(settings, year, make_tracks(year, n=200, level=52, seed=year))
        steps.ingest_tracks(settings, year)
        steps.validate_tracks(settings, year)
        store.mark_finished(settings.curated_dir, year)  # curated only: the next year may start
    plan = planners.plan(settings, 2011, None, None)
    assert plan.strategy == planned and plan.from_scratch and plan.training_periods == [2010, 2011]
    # The period's held-out rows are never fitted.
    assert 0 < plan.train_rows < 400
