"""Training plans, one planner per model family, keyed by strategy.

A plan says what a retrain will fit before anything is trained: the rows, the periods they come
from, the model to fine-tune and a fingerprint of all of it, so that a version trained from the
same inputs before is found instead of trained and registered again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from driftwheel import evaluate, store
from driftwheel.config import Settings

if TYPE_CHECKING:
    from driftwheel.model import AnyModel, TrendResidualModel

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """What a retrain will fit, known before any training: enough to find an identical version."""

    strategy: str
    fingerprint: str
    training_periods: list[int]
    train_rows: int
    example: pd.DataFrame  # a few training rows: the model's input signature
    from_scratch: bool
    train: Callable[[], AnyModel]

    def spent(self) -> TrainingPlan:
        """This plan without its training closure, which holds every training row (all the pooled
        periods of a cold start): what is left once :attr:`train` has run."""
        return dataclasses.replace(self, train=_spent)


def _spent() -> AnyModel:
    raise RuntimeError("this training plan has been trained already (TrainingPlan.spent)")


# A planner: (settings, period, parent version or None, parent model or None) -> plan.
Planner = Callable[[Settings, int, Any, "AnyModel | None"], TrainingPlan]


# Rows hashed at once by fingerprint: the row hashes are summed, so slices give the same digest
# without a copy of a multi-million-row frame.
HASH_BATCH_ROWS = 262_144


def fingerprint(train: pd.DataFrame, extra: dict[str, np.ndarray] | None = None, **inputs: Any) -> str:
    """A hash of the training rows (with ``extra`` columns appended, e.g. which rows are fitted)
    and every other input that changes the trained model."""
    total = 0
    for start in range(0, len(train), HASH_BATCH_ROWS):
        part = train.iloc[start : start + HASH_BATCH_ROWS]
        if extra:
            part = part.assign(**{name: values[start : start + len(part)] for name, values in extra.items()})
        # A uint64 sum wraps around, as the sum of all rows' hashes at once does.
        total += int(pd.util.hash_pandas_object(part, index=False).to_numpy(np.uint64).sum())
    data_hash = total % 2**64 & (2**63 - 1)
    payload = json.dumps({"data": data_hash, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def split(frame: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout) of a period, split by a hash of the row id."""
    mask = evaluate.holdout_mask(frame[settings.dataset.id_column], settings.gate.holdout_fraction)
    return frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)


def trend_residual_inputs(
    settings: Settings, period: int, parent_model: AnyModel | None
) -> tuple[pd.DataFrame, np.ndarray, list[int], TrendResidualModel | None]:
    """(labelled periods, rows to fit, their periods, the model to fine-tune or None).

    Fine-tuning, the labelled frame holds the periods up to ``period`` that the parent's label
    history lacks (a skipped period is caught up) and ``period`` itself; from scratch, every
    period since ``warmup_start``. The period's held-out rows are labelled history for later
    periods but never fitted: the gate scores them.
    """
    from driftwheel import model as model_lib

    cfg = settings.training
    available = [p for p in store.available_periods(settings.curated_dir) if cfg.warmup_start <= p <= period]
    warm = (
        parent_model
        if isinstance(parent_model, model_lib.TrendResidualModel) and cfg.trend_residual.fine_tune
        else None
    )
    if warm is not None:
        known = set(warm.history.periods)
        periods = sorted({p for p in available if p not in known and p < period} | {period})
    else:
        periods = sorted(set(available) | {period})
    labelled = store.read_partitions(settings.curated_dir, periods)
    in_period = (labelled[settings.dataset.period_column] == period).to_numpy()
    held_out = evaluate.holdout_mask(labelled[settings.dataset.id_column], settings.gate.holdout_fraction)
    return labelled, ~(in_period & held_out), periods, warm


def plan_trend_residual(settings: Settings, period: int, parent: Any, parent_model: AnyModel | None) -> TrainingPlan:
    """The default family: fine-tune the champion's trend + residual model, or train it anew."""
    from driftwheel import model as model_lib

    labelled, fit, training_periods, warm_parent = trend_residual_inputs(settings, period, parent_model)
    cfg = settings.training

    def train() -> AnyModel:
        if warm_parent is not None:
            return model_lib.fine_tune_trend_residual(warm_parent, labelled, fit, cfg)
        return model_lib.train_trend_residual(labelled, fit, model_lib.feature_columns(settings.dataset, labelled), cfg)

    digest = fingerprint(
        labelled,
        extra={"_fit": fit},
        period=period,
        strategy="trend_residual",
        parent=str(parent.version) if parent and warm_parent else None,
        training=cfg.fingerprint_inputs("trend_residual", from_parent=warm_parent is not None),
        columns=dataclasses.asdict(
            warm_parent.columns if warm_parent else model_lib.feature_columns(settings.dataset, labelled)
        ),
    )
    return TrainingPlan(
        "trend_residual", digest, training_periods, int(fit.sum()), labelled.head(5).copy(), warm_parent is None, train
    )


def plan_study_net(settings: Settings, period: int, parent: Any, parent_model: AnyModel | None) -> TrainingPlan:
    """The study's network: ``transfer`` fine-tunes the champion, ``full`` (and a cold start) trains anew."""
    from driftwheel import model as model_lib

    spec, cfg = settings.dataset, settings.training
    current = store.read_partition(settings.curated_dir, period)
    latest_train, _ = split(current, settings)
    rows = latest_train
    features = tuple(f for f in spec.features if f in current.columns)

    strategy = cfg.strategy if isinstance(parent_model, model_lib.TrainedModel) else "full"
    training_periods = [period]
    if strategy == "full":
        earlier = [p for p in store.available_periods(settings.curated_dir) if cfg.warmup_start <= p < period]
        if parent is None and earlier:
            rows = pd.concat([store.read_partitions(settings.curated_dir, earlier), latest_train], ignore_index=True)
            training_periods = [*earlier, period]
    elif strategy == "transfer" and cfg.study_net.replay_share > 0:
        earlier = [p for p in store.available_periods(settings.curated_dir) if p < period]
        if earlier:
            pool = store.read_partitions(settings.curated_dir, earlier)
            replay = pool.sample(
                n=min(len(pool), int(cfg.study_net.replay_share * len(latest_train))), random_state=cfg.seed
            )
            rows = pd.concat([latest_train, replay], ignore_index=True)
    if (
        strategy == "transfer"
        and isinstance(parent_model, model_lib.TrainedModel)
        and not set(parent_model.preprocessing.features) <= set(features)
    ):
        logger.warning("period %s lacks features of the champion; training from scratch instead", period)
        strategy = "full"

    def train() -> AnyModel:
        if strategy == "transfer" and isinstance(parent_model, model_lib.TrainedModel):
            return model_lib.fine_tune(parent_model, rows, spec.target, cfg)
        trained = model_lib.train_full(rows, features, spec.target, cfg)
        if len(training_periods) > 1:
            # The pooled warm-up years sit at older label levels; adapting the head to the
            # newest period's training split starts production at the current level.
            adapted = model_lib.fine_tune(trained, latest_train, spec.target, cfg)
            adapted.train_seconds += trained.train_seconds
            adapted.strategy = "full"
            return adapted
        return trained

    digest = fingerprint(
        rows[[spec.id_column, *features, spec.target]],
        period=period,
        strategy=strategy,
        parent=str(parent.version) if parent else None,
        training=cfg.fingerprint_inputs(strategy, from_parent=strategy == "transfer", pooled=len(training_periods) > 1),
    )
    return TrainingPlan(strategy, digest, training_periods, len(rows), rows.head(5).copy(), strategy == "full", train)


PLANNERS: dict[str, Planner] = {
    "trend_residual": plan_trend_residual,
    "transfer": plan_study_net,
    "full": plan_study_net,
}


def plan(settings: Settings, period: int, parent: Any, parent_model: AnyModel | None) -> TrainingPlan:
    """The plan of the configured strategy's planner (raises KeyError naming an unknown strategy)."""
    try:
        planner = PLANNERS[settings.training.strategy]
    except KeyError:
        raise KeyError(
            f"no training planner for strategy {settings.training.strategy!r}; known: {sorted(PLANNERS)}"
        ) from None
    return planner(settings, period, parent, parent_model)
