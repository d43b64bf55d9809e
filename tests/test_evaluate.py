from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftwheel import store
from driftwheel.config import GatePolicy
from driftwheel.evaluate import baseline_level, holdout_mask, passes_gate, rmse


def test_rmse() -> None:
    assert rmse(np.array([1.0, 3.0]), np.array([1.0, 1.0])) == np.sqrt(2.0)


Y = np.random.default_rng(7).normal(50.0, 15.0, 5000)


def predictions(target_rmse: float, n: int = 5000, seed: int = 1) -> np.ndarray:
    """Predictions of the first ``n`` labels of ``Y`` whose RMSE is exactly ``target_rmse``
    (independent errors per seed: two models differ row by row, as real ones do)."""
    errors = np.random.default_rng(seed).normal(0.0, 1.0, n)
    if n == 0:
        return errors
    return Y[:n] + errors * target_rmse / np.sqrt(np.mean(errors**2))


def gate(challenger: float, champion: float | None, baseline: float, policy: GatePolicy, n: int = 2000):  # type: ignore[no-untyped-def]
    return passes_gate(
        Y[:n],
        predictions(challenger, n, seed=1),
        None if champion is None else predictions(champion, n, seed=2),
        predictions(baseline, n, seed=3),
        policy,
    )


def test_gate_rejects_a_worse_challenger() -> None:
    result = gate(6.5, 6.0, 7.0, GatePolicy(min_improvement=0.01))
    assert not result.passed and "not 1% better" in result.reason and result.rule == "champion"


def test_gate_requires_the_margin_and_the_baseline() -> None:
    policy = GatePolicy(min_improvement=0.05)
    assert not gate(5.8, 6.0, 7.0, policy).passed  # 3% better: below the margin
    assert gate(5.6, 6.0, 7.0, policy).passed
    assert not gate(5.6, None, 5.5, policy).passed  # first model: the naive baseline is better
    assert gate(5.6, None, 7.0, policy).passed  # first model: baseline only


def test_a_challenger_that_beats_a_stale_champion_is_promoted_even_below_the_baseline() -> None:
    # After a lasting change the champion can fall behind the previous period's mean. Production
    # serves the champion, not the baseline: keeping it would keep the worse model serving.
    result = gate(5.6, 6.0, 5.5, GatePolicy(min_improvement=0.05))
    assert result.passed and result.rule == "stale_champion"
    assert "not surely better than the baseline" in result.reason and "beats the champion" in result.reason
    assert result.vs_champion is not None and result.vs_champion.high < 0


def test_a_challenger_that_beats_a_stale_champion_on_the_level_only_is_rejected_below_the_baseline() -> None:
    # Same residual errors, but the champion is 3 points off this period's level: the challenger
    # has learnt the level, which the baseline knows as well and a step back in the label undoes.
    n = 2000
    noise = predictions(5.0, n, seed=1) - Y[:n]
    result = passes_gate(Y[:n], Y[:n] + noise, Y[:n] + noise + 3.0, predictions(4.5, n, seed=3), GatePolicy())
    assert result.vs_champion is not None and result.vs_champion.high < 0  # better than the champion...
    assert not result.passed and result.rule == "baseline"  # ...only on the level


def test_a_challenger_below_the_baseline_that_ties_the_champion_is_rejected() -> None:
    result = gate(5.95, 6.0, 5.5, GatePolicy(), n=200)
    assert not result.passed and result.rule == "baseline" and "not surely better" in result.reason


def test_a_clearly_better_challenger_on_enough_rows_passes_with_its_evidence() -> None:
    result = gate(4.0, 6.0, 7.0, GatePolicy(), n=500)
    assert result.passed and result.rule == "champion" and result.holdout_rows == 500
    assert result.vs_champion is not None and result.vs_baseline is not None
    assert result.vs_champion.low < result.vs_champion.difference < result.vs_champion.high < 0
    assert result.vs_champion.difference == pytest.approx(4.0 - 6.0)
    assert result.vs_baseline.high < 0


def test_a_challenger_better_by_noise_does_not_pass() -> None:
    # 0.3 points better on 200 rows clears the 1 % margin, but the interval straddles zero: noise.
    result = gate(5.7, 6.0, 9.0, GatePolicy(), n=200)
    assert not result.passed and result.rule == "champion" and "only by noise" in result.reason
    assert result.vs_champion is not None and result.vs_champion.low < 0 < result.vs_champion.high
    # The same models on 25 times the rows: the difference is real.
    assert gate(5.7, 6.0, 9.0, GatePolicy(), n=5000).passed


def test_the_gate_needs_the_baseline_beaten_by_more_than_noise() -> None:
    result = gate(6.9, None, 7.0, GatePolicy(), n=200)
    assert not result.passed and result.rule == "baseline" and "not surely better" in result.reason


def test_the_bootstrap_is_deterministic_and_seeded() -> None:
    first, again = gate(5.7, 6.0, 9.0, GatePolicy(), n=300), gate(5.7, 6.0, 9.0, GatePolicy(), n=300)
    assert first.vs_champion == again.vs_champion
    reseeded = gate(5.7, 6.0, 9.0, GatePolicy(bootstrap_seed=1), n=300)
    assert reseeded.vs_champion != first.vs_champion


def test_the_interval_narrows_with_the_confidence() -> None:
    wide, narrow = (
        gate(5.7, 6.0, 9.0, GatePolicy(confidence=0.99), n=300),
        gate(5.7, 6.0, 9.0, GatePolicy(confidence=0.6), n=300),
    )
    assert wide.vs_champion is not None and narrow.vs_champion is not None
    assert wide.vs_champion.low < narrow.vs_champion.low < narrow.vs_champion.high < wide.vs_champion.high


def test_holdout_split_depends_on_ids_not_row_order() -> None:
    ids = pd.Series([f"track{i}" for i in range(5000)])
    mask = holdout_mask(ids, 0.2)
    assert 0.17 < mask.mean() < 0.23
    shuffled = ids.sample(frac=1, random_state=1)
    assert (holdout_mask(shuffled, 0.2) == mask[shuffled.index]).all()


def test_a_disabled_gate_promotes_even_a_worse_challenger() -> None:
    result = gate(9.0, 5.0, 6.0, GatePolicy(enabled=False))
    assert result.passed and "gate disabled" in result.reason and result.rule == "gate_disabled"


def test_the_gate_never_passes_on_non_finite_metrics() -> None:
    policy = GatePolicy()
    y, good, base = Y[:100], predictions(4.0, 100), predictions(7.29, 100, seed=3)
    nan = np.full(100, np.nan)
    inf = good.copy()
    inf[5] = np.inf
    # The finding: "challenger RMSE nan beats the champion nan and the baseline 7.29" promoted a NaN model.
    assert not passes_gate(y, nan, nan, base, policy).passed
    assert "non-finite" in passes_gate(y, nan, good, base, policy).reason
    assert not passes_gate(y, inf, None, base, policy).passed
    assert not passes_gate(y, good, good, nan, policy).passed
    assert not passes_gate(y, nan, good, base, GatePolicy(enabled=False)).passed  # not even with the gate off


def test_a_broken_champion_can_be_replaced_by_a_challenger_that_beats_the_baseline() -> None:
    y, nan = Y[:1000], np.full(1000, np.nan)
    healed = passes_gate(y, predictions(6.3, 1000), nan, predictions(7.29, 1000, seed=3), GatePolicy())
    assert healed.passed and "non-finite" in healed.reason and healed.rule == "broken_champion"
    assert not passes_gate(y, predictions(7.5, 1000), nan, predictions(7.29, 1000, seed=3), GatePolicy()).passed


def test_the_gate_refuses_a_held_out_split_below_the_minimum() -> None:
    policy = GatePolicy(min_holdout_rows=50)
    tiny = gate(4.0, 6.0, 7.0, policy, n=0)
    assert not tiny.passed and "0 held-out rows (minimum 50)" in tiny.reason and tiny.rule == "too_few_rows"
    # Even a challenger far better on the few rows there are: 49 rows cannot rank two models.
    assert not gate(2.0, 6.0, 7.0, policy, n=49).passed
    assert not gate(2.0, 6.0, 7.0, GatePolicy(enabled=False, min_holdout_rows=50), n=49).passed
    assert gate(2.0, 6.0, 7.0, policy, n=50).passed


def test_baseline_is_the_previous_periods_mean_else_the_training_split(tmp_path: Path) -> None:
    current = pd.DataFrame({"popularity": [10.0, 20.0, 30.0, 90.0]})
    held_out = np.array([False, False, False, True])
    # No previous period: the mean of this period's training rows, never of the rows the gate scores.
    assert baseline_level(tmp_path, 2012, current, "popularity", held_out) == 20.0
    store.write_partition(tmp_path, 2011, pd.DataFrame({"popularity": [40.0, 60.0]}))
    assert baseline_level(tmp_path, 2012, current, "popularity", held_out) == 50.0
