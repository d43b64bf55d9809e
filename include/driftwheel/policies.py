"""The retrain policies the product offers, as changes to the settings.

A policy is a name and a function from the base settings to the settings it runs with: which
model family, when to retrain (:class:`~driftwheel.config.DriftPolicy`) and whether the gate
judges challengers. The prequential benchmark (``benchmarks/prequential.py``) and the drift lab
(:mod:`driftwheel.lab`) replay the same policies through :func:`driftwheel.replay.replay`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from driftwheel.config import DriftPolicy, GatePolicy, Settings, TrainingConfig

NEVER = DriftPolicy(
    max_drift_share=math.inf, retrain_on_target_drift=False, max_rmse_increase=math.inf, max_model_age=None
)
# The study promoted every model it trained; its policies are replayed without the project's gate.
NO_GATE = GatePolicy(enabled=False)


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    # How the policy changes the base settings; None for a policy that trains no model.
    configure: Callable[[Settings], Settings] | None


def _training(settings: Settings, **changes: Any) -> TrainingConfig:
    return dataclasses.replace(settings.training, **changes)


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy(
            "static",
            "study net trained once on the warm-up years, never retrained",
            lambda s: dataclasses.replace(s, training=_training(s, strategy="full"), drift=NEVER, gate=NO_GATE),
        ),
        Policy(
            "study_transfer",
            "study net, first 3 of 5 layers frozen, last 2 fine-tuned when production RMSE > 3.5",
            lambda s: dataclasses.replace(
                s,
                training=_training(
                    s,
                    strategy="transfer",
                    study_net=dataclasses.replace(s.training.study_net, freeze_layers=3, fine_tune_epochs=30),
                ),
                drift=dataclasses.replace(NEVER, max_production_rmse=3.5),
                gate=NO_GATE,
            ),
        ),
        Policy(
            "full_retrain",
            "study net retrained from scratch on the latest year, every year",
            lambda s: dataclasses.replace(s, training=_training(s, strategy="full"), force_retrain=True, gate=NO_GATE),
        ),
        Policy("previous_mean", "every track gets the previous year's mean popularity", None),
        Policy(
            "default",
            "the project's defaults: trend_residual, retrained every period (and on drift), bootstrap-gated",
            lambda s: s,
        ),
        Policy(
            "default_drift_triggered",
            "as default, but retrained only when a drift or error rule fires (no schedule)",
            lambda s: dataclasses.replace(s, drift=dataclasses.replace(s.drift, max_model_age=None)),
        ),
        Policy(
            "default_from_scratch",
            "as default, but every retrain trains from scratch on all labelled years",
            lambda s: dataclasses.replace(
                s,
                training=_training(s, trend_residual=dataclasses.replace(s.training.trend_residual, fine_tune=False)),
            ),
        ),
        # The default's two triggers apart: which of them earns its retrains on which change.
        Policy(
            "drift_triggered",
            "as default, but retrains only on drift (feature drift share or target drift), not on error",
            lambda s: dataclasses.replace(
                s, drift=dataclasses.replace(s.drift, max_rmse_increase=math.inf, max_model_age=None)
            ),
        ),
        Policy(
            "error_triggered",
            "as default, but retrains only when production RMSE exceeds the champion's held-out RMSE by 10 %",
            lambda s: dataclasses.replace(
                s,
                drift=dataclasses.replace(
                    s.drift, max_drift_share=math.inf, retrain_on_target_drift=False, max_model_age=None
                ),
            ),
        ),
    )
}

# The benchmark's table, in its order (docs/benchmark/benchmark.md).
BENCHMARK_POLICIES: tuple[str, ...] = (
    "static",
    "study_transfer",
    "full_retrain",
    "previous_mean",
    "default",
    "default_drift_triggered",
    "default_from_scratch",
)
# The lab's default: never, every period, on drift, on error, the study's threshold, the default.
LAB_POLICIES: tuple[str, ...] = (
    "static",
    "full_retrain",
    "drift_triggered",
    "error_triggered",
    "study_transfer",
    "default",
)
