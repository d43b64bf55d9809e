from pathlib import Path

import numpy as np
import pandas as pd

from driftwheel import store
from driftwheel.config import GatePolicy
from driftwheel.evaluate import baseline_level, holdout_mask, passes_gate, rmse


def test_rmse() -> None:
    assert rmse(np.array([1.0, 3.0]), np.array([1.0, 1.0])) == np.sqrt(2.0)


def test_gate_rejects_a_worse_challenger() -> None:
    result = passes_gate(6.5, 6.0, 7.0, GatePolicy(min_improvement=0.01))
    assert not result.passed and "not 1% better" in result.reason


def test_gate_requires_the_margin_and_the_baseline() -> None:
    policy = GatePolicy(min_improvement=0.05)
    assert not passes_gate(5.8, 6.0, 7.0, policy).passed  # 3% better: below the margin
    assert passes_gate(5.6, 6.0, 7.0, policy).passed
    assert not passes_gate(5.6, 6.0, 5.5, policy).passed  # the naive baseline is better
    assert passes_gate(5.6, None, 7.0, policy).passed  # first model: baseline only


def test_holdout_split_depends_on_ids_not_row_order() -> None:
    ids = pd.Series([f"track{i}" for i in range(5000)])
    mask = holdout_mask(ids, 0.2)
    assert 0.17 < mask.mean() < 0.23
    shuffled = ids.sample(frac=1, random_state=1)
    assert (holdout_mask(shuffled, 0.2) == mask[shuffled.index]).all()


def test_a_disabled_gate_promotes_even_a_worse_challenger() -> None:
    result = passes_gate(9.0, 5.0, 6.0, GatePolicy(enabled=False))
    assert result.passed and "gate disabled" in result.reason


def test_the_gate_never_passes_on_non_finite_metrics() -> None:
    policy = GatePolicy()
    nan, inf = float("nan"), float("inf")
    # The finding: "challenger RMSE nan beats the champion nan and the baseline 7.29" promoted a NaN model.
    assert not passes_gate(nan, nan, 7.29, policy).passed
    assert "non-finite" in passes_gate(nan, 6.0, 7.29, policy).reason
    assert not passes_gate(inf, None, 7.29, policy).passed
    assert not passes_gate(5.0, 6.0, nan, policy).passed
    assert not passes_gate(nan, 6.0, 7.0, GatePolicy(enabled=False)).passed  # not even with the gate off


def test_a_broken_champion_can_be_replaced_by_a_challenger_that_beats_the_baseline() -> None:
    healed = passes_gate(6.3, float("nan"), 7.29, GatePolicy())
    assert healed.passed and "non-finite" in healed.reason
    assert not passes_gate(7.5, float("nan"), 7.29, GatePolicy()).passed


def test_the_gate_refuses_a_held_out_split_below_the_minimum() -> None:
    policy = GatePolicy(min_holdout_rows=50)
    tiny = passes_gate(4.0, 6.0, 7.0, policy, holdout_rows=0)
    assert not tiny.passed and "0 held-out rows (minimum 50)" in tiny.reason
    assert not passes_gate(4.0, 6.0, 7.0, policy, holdout_rows=49).passed
    assert passes_gate(4.0, 6.0, 7.0, policy, holdout_rows=50).passed


def test_baseline_is_the_previous_periods_mean_else_the_training_split(tmp_path: Path) -> None:
    current = pd.DataFrame({"popularity": [10.0, 20.0, 30.0, 90.0]})
    held_out = np.array([False, False, False, True])
    # No previous period: the mean of this period's training rows, never of the rows the gate scores.
    assert baseline_level(tmp_path, 2012, current, "popularity", held_out) == 20.0
    store.write_partition(tmp_path, 2011, pd.DataFrame({"popularity": [40.0, 60.0]}))
    assert baseline_level(tmp_path, 2012, current, "popularity", held_out) == 50.0
