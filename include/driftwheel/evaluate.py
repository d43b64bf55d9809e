"""The offline gate: challenger vs champion vs a naive baseline, on a held-out split of the period."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from driftwheel import store
from driftwheel.config import GatePolicy


@dataclass(frozen=True)
class Interval:
    """A paired comparison on the held-out rows: the challenger's RMSE minus another model's.

    ``difference`` < 0: the challenger is better. ``low``/``high`` bound the difference at the
    gate's confidence, one-sided each (a paired bootstrap over the rows, see :func:`paired_difference`).
    """

    difference: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.difference:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    challenger_rmse: float
    champion_rmse: float | None
    baseline_rmse: float
    holdout_rows: int = 0
    # Challenger minus champion / minus baseline, with their intervals; None when not compared.
    vs_champion: Interval | None = None
    vs_baseline: Interval | None = None
    # Which rule decided (a short, stable name: the period run's flywheel.gate_rule tag).
    rule: str = ""


def rmse(y_true: np.ndarray | pd.Series, y_pred: np.ndarray | pd.Series) -> float:
    diff = np.asarray(y_true, dtype=float) - np.asarray(y_pred, dtype=float)
    return float(np.sqrt(np.mean(diff**2)))


def holdout_mask(ids: pd.Series, fraction: float) -> np.ndarray:
    """True for the rows of the held-out split.

    The split is a hash of the row's id, not of its position: the same track always lands on
    the same side, whatever the row order, and a rerun sees the same split.
    """
    hashes = pd.util.hash_pandas_object(ids.astype(str), index=False).to_numpy()
    return (hashes % 10_000) < int(round(fraction * 10_000))


def previous_level(curated_dir: Path, period: int, target: str) -> float | None:
    """The previous period's mean label (known before ``period``'s labels are); None without one."""
    if store.has_partition(curated_dir, period - 1):
        return float(store.read_partition(curated_dir, period - 1, columns=[target])[target].mean())
    return None


def baseline_level(curated_dir: Path, period: int, current: pd.DataFrame, target: str, held_out: np.ndarray) -> float:
    """The baseline's prediction for every row of ``period``: the previous period's mean label.

    That mean is known before this period's labels arrive. Without a previous period (the first
    one) it is the mean label of this period's training split (``~held_out``), never of the rows
    the gate scores.
    """
    previous = previous_level(curated_dir, period, target)
    return previous if previous is not None else float(current[~held_out].reset_index(drop=True)[target].mean())


def paired_difference(
    challenger_sq: np.ndarray,
    others_sq: list[np.ndarray],
    *,
    confidence: float,
    resamples: int,
    seed: int,
) -> list[Interval]:
    """The challenger's RMSE minus each other model's, with a paired bootstrap interval each.

    Every resample draws the same rows for all models (paired), so what varies is the difference
    on the rows, not which rows were drawn. Squared errors are resampled; the interval is on the
    RMSE difference (popularity points) and has the sign of the squared-error difference on every
    resample. ``low``/``high`` are the ``1 - confidence`` and ``confidence`` quantiles. Seeded and
    vectorised: the same inputs give the same intervals on every run.
    """
    n = len(challenger_sq)
    rng = np.random.default_rng(seed)
    errors = np.vstack([challenger_sq, *others_sq])  # (models, rows)
    # Resample means as counts @ errors: counts per row ~ Multinomial(n, 1/n) per resample.
    # Chunked so that a 100,000-row split needs ~10 MB at a time, not resamples x rows at once.
    chunk = max(1, 1_000_000 // max(n, 1))
    means = []
    for start in range(0, resamples, chunk):
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, resamples - start))
        means.append(counts @ errors.T / n)  # (resamples, models)
    rmses = np.sqrt(np.vstack(means))
    point = np.sqrt(errors.mean(axis=1))
    intervals = []
    for k in range(1, errors.shape[0]):
        diffs = rmses[:, 0] - rmses[:, k]
        low, high = np.quantile(diffs, [1 - confidence, confidence])
        intervals.append(Interval(float(point[0] - point[k]), float(low), float(high)))
    return intervals


def passes_gate(
    y_true: np.ndarray | pd.Series,
    challenger: np.ndarray | pd.Series,
    champion: np.ndarray | pd.Series | None,
    baseline: np.ndarray | pd.Series,
    policy: GatePolicy,
) -> GateResult:
    """Promote only if the challenger beats the baseline and the champion by more than noise.

    The arguments are the held-out labels and each model's predictions of them (``champion`` None:
    there is none yet). Rules, in order; the first that fires decides and names itself in ``rule``:

    1. ``too_few_rows``: fewer than ``policy.min_holdout_rows`` held-out rows: refuse, even with
       the gate disabled (an RMSE on n rows is known to about ±1/sqrt(2n) of itself).
    2. ``non_finite``: a non-finite challenger or baseline RMSE: refuse, even with the gate disabled.
    3. ``gate_disabled``: promote unchecked (the study's policies).
    4. ``baseline``: the challenger's RMSE minus the baseline's must have an upper bound (one-sided,
       at ``policy.confidence``, paired bootstrap) below zero, unless rule 7 promotes it.
    5. ``first_model`` / ``broken_champion``: without a champion, or with one whose predictions are
       not finite (so a broken champion can be replaced), beating the baseline is enough.
    6. ``champion``: the challenger must be ``policy.min_improvement`` better than the champion and
       the upper bound of its RMSE minus the champion's must be below zero.
    7. ``stale_champion``: a challenger that passes rule 6 but not rule 4 is promoted all the same
       if it is also surely better than the champion with each model's mean error on the held-out
       rows removed (:func:`_beyond_level`). Production serves the champion, never the baseline:
       after a lasting change of what drives the label, refusing such a challenger keeps the worse
       of the two models serving (in the drift lab's concept scenarios the old rule kept the
       pre-change champion for six years while each year's challenger beat it by 0.5-1.5 points).
       A challenger that wins on the level only is not promoted by this rule: it has learnt this
       period's level, which the baseline knows too and which a level step back undoes (the lab's
       recurring label scenario). The reason says that neither model beats the baseline.
    """
    y = np.asarray(y_true, dtype=float)
    n = len(y)

    def sq(pred: np.ndarray | pd.Series) -> np.ndarray:
        return (y - np.asarray(pred, dtype=float)) ** 2

    challenger_sq, baseline_sq = sq(challenger), sq(baseline)
    champion_sq = None if champion is None else sq(champion)
    challenger_rmse = _root_mean(challenger_sq)
    baseline_rmse = _root_mean(baseline_sq)
    champion_rmse = None if champion_sq is None else _root_mean(champion_sq)
    vs_champion: Interval | None = None
    vs_baseline: Interval | None = None

    def result(passed: bool, rule: str, reason: str) -> GateResult:
        return GateResult(
            passed, reason, challenger_rmse, champion_rmse, baseline_rmse, n, vs_champion, vs_baseline, rule
        )

    if n < policy.min_holdout_rows:
        return result(
            False,
            "too_few_rows",
            f"only {n} held-out rows (minimum {policy.min_holdout_rows}): too few to compare models",
        )
    for name, value in (("challenger", challenger_rmse), ("baseline", baseline_rmse)):
        if not math.isfinite(value):
            return result(False, "non_finite", f"the {name} RMSE is {value}: no decision on non-finite metrics")
    if not policy.enabled:
        return result(True, "gate_disabled", f"gate disabled: challenger RMSE {challenger_rmse:.2f} promoted unchecked")

    healthy_champion = champion_sq is not None and champion_rmse is not None and math.isfinite(champion_rmse)
    others = [baseline_sq, *([champion_sq] if healthy_champion and champion_sq is not None else [])]
    intervals = paired_difference(
        challenger_sq,
        others,
        confidence=policy.confidence,
        resamples=policy.bootstrap_resamples,
        seed=policy.bootstrap_seed,
    )
    vs_baseline = intervals[0]
    vs_champion = intervals[1] if healthy_champion else None
    level = f"{policy.confidence:.0%}"
    not_above_baseline = (
        f"challenger RMSE {challenger_rmse:.2f} is not surely better than the baseline {baseline_rmse:.2f} "
        f"on {n} rows (difference {vs_baseline}, {level} bounds)"
    )
    beats_champion = (
        vs_champion is not None
        and champion_rmse is not None
        and challenger_rmse <= champion_rmse * (1 - policy.min_improvement)
        and vs_champion.high < 0
    )
    if vs_baseline.high >= 0:
        beyond_level = (
            _beyond_level(y, challenger, champion, policy) if beats_champion and champion is not None else None
        )
        if beyond_level is None or beyond_level.high >= 0:
            return result(False, "baseline", not_above_baseline)
        return result(
            True,
            "stale_champion",
            f"{not_above_baseline}, but it beats the champion's {champion_rmse:.2f} (difference {vs_champion}; "
            f"{beyond_level} with each model's mean error removed): promoted, since production serves the "
            "champion, not the baseline",
        )
    if champion_rmse is None:
        return result(
            True,
            "first_model",
            f"first model: RMSE {challenger_rmse:.2f} beats the baseline {baseline_rmse:.2f} on {n} rows "
            f"(difference {vs_baseline})",
        )
    if vs_champion is None:
        return result(
            True,
            "broken_champion",
            f"the champion's RMSE is {champion_rmse} (it predicts non-finite values); "
            f"challenger RMSE {challenger_rmse:.2f} beats the baseline {baseline_rmse:.2f}",
        )
    bar = champion_rmse * (1 - policy.min_improvement)
    if challenger_rmse > bar:
        return result(
            False,
            "champion",
            f"challenger RMSE {challenger_rmse:.2f} is not {policy.min_improvement:.0%} better than "
            f"the champion's {champion_rmse:.2f} (difference {vs_champion} on {n} rows)",
        )
    if vs_champion.high >= 0:
        return result(
            False,
            "champion",
            f"challenger RMSE {challenger_rmse:.2f} beats the champion's {champion_rmse:.2f} only by noise "
            f"on {n} rows (difference {vs_champion}, {level} bounds)",
        )
    return result(
        True,
        "champion",
        f"challenger RMSE {challenger_rmse:.2f} beats the champion {champion_rmse:.2f} "
        f"(difference {vs_champion}) and the baseline {baseline_rmse:.2f} on {n} rows",
    )


def _beyond_level(
    y: np.ndarray, challenger: np.ndarray | pd.Series, champion: np.ndarray | pd.Series, policy: GatePolicy
) -> Interval:
    """The challenger's RMSE minus the champion's once each model's mean error on these rows is
    removed: what the challenger learnt besides the period's level (paired bootstrap, as the gate).
    The caller has checked that both RMSEs are finite, so every error is."""
    errors = [y - np.asarray(pred, dtype=float) for pred in (challenger, champion)]
    challenger_sq, champion_sq = ((e - e.mean()) ** 2 for e in errors)
    return paired_difference(
        challenger_sq,
        [champion_sq],
        confidence=policy.confidence,
        resamples=policy.bootstrap_resamples,
        seed=policy.bootstrap_seed,
    )[0]


def _root_mean(squared: np.ndarray) -> float:
    with np.errstate(invalid="ignore", over="ignore"):
        return float(np.sqrt(np.mean(squared))) if len(squared) else math.nan
