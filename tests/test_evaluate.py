import numpy as np
import pandas as pd

from driftwheel.config import GatePolicy
from driftwheel.evaluate import holdout_mask, passes_gate, rmse


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
