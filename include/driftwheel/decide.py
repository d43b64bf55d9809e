"""Whether a new period warrants a retrain: a pure function of the drift summary and the policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from driftwheel.config import DriftPolicy

Action = Literal["retrain", "skip"]


@dataclass(frozen=True)
class DriftSummary:
    """What :mod:`driftwheel.drift` learned about a period; small enough for XCom."""

    period: int
    rows: int
    drift_share: float | None  # share of drifted feature columns; None without a reference
    drifted_columns: int | None
    target_drift_score: float | None
    target_drifted: bool | None
    production_rmse: float | None  # the champion on this period, before any retraining
    champion_version: str | None
    champion_holdout_rmse: float | None  # the champion's own held-out RMSE when it was promoted
    champion_trained_through: int | None = None  # the newest period the champion was trained on


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    # Which rule(s) fired, "+"-joined stable names (the period run's flywheel.decision_rule tag):
    # too_few_rows, warmup, cold_start, forced, feature_drift, target_drift, rmse_increase,
    # rmse_threshold, schedule, stable. The numbers behind them are in ``reason`` and the run's metrics.
    rule: str = ""

    @property
    def retrain(self) -> bool:
        return self.action == "retrain"


def should_retrain(
    summary: DriftSummary,
    policy: DriftPolicy,
    *,
    warmup_end: int,
    force: bool = False,
    min_rows: int = 0,
) -> Decision:
    """Decide ``retrain`` or ``skip`` for ``summary.period``; the reason says which rule fired.

    Before ``warmup_end`` the flywheel only accumulates data (the first model is trained on the
    pooled warm-up years). With no champion at or after ``warmup_end`` it trains the first model.
    A period of fewer than ``min_rows`` rows is never trained on, not even when forced: its
    held-out split could not tell a good model from a bad one.
    """
    if summary.rows < min_rows and not (summary.champion_version is None and summary.period < warmup_end):
        return Decision(
            "skip",
            f"only {summary.rows} rows in {summary.period} (minimum {min_rows}): too few to retrain on",
            "too_few_rows",
        )
    if summary.champion_version is None:
        if summary.period < warmup_end:
            return Decision("skip", f"warm-up: pooling data until {warmup_end}, no model yet", "warmup")
        return Decision("retrain", "cold start: no champion yet", "cold_start")
    if force:
        return Decision("retrain", "forced by the run's force_retrain param", "forced")

    reasons: list[str] = []
    rules: list[str] = []
    if summary.drift_share is not None and summary.drift_share >= policy.max_drift_share:
        reasons.append(f"feature drift share {summary.drift_share:.2f} >= {policy.max_drift_share:.2f}")
        rules.append("feature_drift")
    if policy.retrain_on_target_drift and summary.target_drifted:
        reasons.append(f"target drift (score {summary.target_drift_score:.3g})")
        rules.append("target_drift")
    if summary.production_rmse is not None and summary.champion_holdout_rmse:
        limit = summary.champion_holdout_rmse * (1 + policy.max_rmse_increase)
        if summary.production_rmse > limit:
            reasons.append(
                f"production RMSE {summary.production_rmse:.2f} > {limit:.2f} "
                f"(held-out {summary.champion_holdout_rmse:.2f} + {policy.max_rmse_increase:.0%})"
            )
            rules.append("rmse_increase")
    if (
        policy.max_production_rmse is not None
        and summary.production_rmse is not None
        and summary.production_rmse > policy.max_production_rmse
    ):
        reasons.append(f"production RMSE {summary.production_rmse:.2f} > {policy.max_production_rmse:.2f}")
        rules.append("rmse_threshold")
    if policy.max_model_age is not None and summary.champion_trained_through is not None:
        age = summary.period - summary.champion_trained_through
        if age >= policy.max_model_age:
            reasons.append(
                f"schedule: the champion learnt up to {summary.champion_trained_through}, "
                f"{age} period(s) old (retrain at {policy.max_model_age})"
            )
            rules.append("schedule")
    if reasons:
        return Decision("retrain", "; ".join(reasons), "+".join(rules))

    share = "n/a" if summary.drift_share is None else f"{summary.drift_share:.2f}"
    rmse = "n/a" if summary.production_rmse is None else f"{summary.production_rmse:.2f}"
    return Decision(
        "skip", f"stable: drift share {share}, no target drift, production RMSE {rmse} within tolerance", "stable"
    )
