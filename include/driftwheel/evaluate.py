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
class GateResult:
    passed: bool
    reason: str
    challenger_rmse: float
    champion_rmse: float | None
    baseline_rmse: float


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


def passes_gate(
    challenger_rmse: float,
    champion_rmse: float | None,
    baseline_rmse: float,
    policy: GatePolicy,
    holdout_rows: int | None = None,
) -> GateResult:
    """Promote only if the challenger beats the baseline and beats the champion by the margin.

    The gate never passes on missing evidence, even when disabled: fewer than
    ``policy.min_holdout_rows`` held-out rows, or a non-finite challenger or baseline RMSE, is a
    refusal. A champion whose RMSE is not finite predicts nothing usable: the challenger then only
    has to beat the baseline, so a broken champion can be replaced (the flywheel heals itself).
    """

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult(passed, reason, challenger_rmse, champion_rmse, baseline_rmse)

    if holdout_rows is not None and holdout_rows < policy.min_holdout_rows:
        return result(
            False,
            f"only {holdout_rows} held-out rows (minimum {policy.min_holdout_rows}): too few to compare models",
        )
    for name, value in (("challenger", challenger_rmse), ("baseline", baseline_rmse)):
        if not math.isfinite(value):
            return result(False, f"the {name} RMSE is {value}: no decision on non-finite metrics")
    if not policy.enabled:
        return result(True, f"gate disabled: challenger RMSE {challenger_rmse:.2f} promoted unchecked")
    if challenger_rmse >= baseline_rmse:
        return result(False, f"challenger RMSE {challenger_rmse:.2f} does not beat the baseline {baseline_rmse:.2f}")
    if champion_rmse is None:
        return result(True, f"first model: RMSE {challenger_rmse:.2f} beats the baseline {baseline_rmse:.2f}")
    if not math.isfinite(champion_rmse):
        return result(
            True,
            f"the champion's RMSE is {champion_rmse} (it predicts non-finite values); "
            f"challenger RMSE {challenger_rmse:.2f} beats the baseline {baseline_rmse:.2f}",
        )
    bar = champion_rmse * (1 - policy.min_improvement)
    if challenger_rmse > bar:
        return result(
            False,
            f"challenger RMSE {challenger_rmse:.2f} is not {policy.min_improvement:.0%} better than "
            f"the champion's {champion_rmse:.2f}",
        )
    return result(
        True,
        f"challenger RMSE {challenger_rmse:.2f} beats the champion {champion_rmse:.2f} "
        f"and the baseline {baseline_rmse:.2f}",
    )
