"""The offline gate: challenger vs champion vs a naive baseline, on a held-out split of the period."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

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


def passes_gate(
    challenger_rmse: float,
    champion_rmse: float | None,
    baseline_rmse: float,
    policy: GatePolicy,
) -> GateResult:
    """Promote only if the challenger beats the baseline and beats the champion by the margin."""
    if not policy.enabled:
        return GateResult(True, f"gate disabled: challenger RMSE {challenger_rmse:.2f} promoted unchecked",
                          challenger_rmse, champion_rmse, baseline_rmse)
    if challenger_rmse >= baseline_rmse:
        return GateResult(
            False,
            f"challenger RMSE {challenger_rmse:.2f} does not beat the baseline {baseline_rmse:.2f}",
            challenger_rmse,
            champion_rmse,
            baseline_rmse,
        )
    if champion_rmse is None:
        return GateResult(
            True,
            f"first model: RMSE {challenger_rmse:.2f} beats the baseline {baseline_rmse:.2f}",
            challenger_rmse,
            None,
            baseline_rmse,
        )
    bar = champion_rmse * (1 - policy.min_improvement)
    if challenger_rmse > bar:
        return GateResult(
            False,
            f"challenger RMSE {challenger_rmse:.2f} is not {policy.min_improvement:.0%} better than "
            f"the champion's {champion_rmse:.2f}",
            challenger_rmse,
            champion_rmse,
            baseline_rmse,
        )
    return GateResult(
        True,
        f"challenger RMSE {challenger_rmse:.2f} beats the champion {champion_rmse:.2f} "
        f"and the baseline {baseline_rmse:.2f}",
        challenger_rmse,
        champion_rmse,
        baseline_rmse,
    )
