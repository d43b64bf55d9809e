"""The popularity regressors and how each strategy trains them.

``trend_residual`` (the default, :class:`TrendResidualModel`): prediction = the label level of
the row's period (:func:`driftwheel.features.trend_level`, a line through the last yearly means
that restarts after a step) plus the mean of a small ensemble of MLPs that predict the residual
from audio, label-history and batch features (:mod:`driftwheel.features`). The label history, the
scalers and a replay buffer of earlier rows travel in the artifact. A retrain fine-tunes every
member for a few epochs on the new period plus replayed earlier rows, with nothing frozen: the
history grows by the new period, new artists get rows, old ones stay.

``transfer`` and ``full`` (:class:`TrainedModel`): the study's dense 32-32-32-50-1 network on the
audio features. Scalers are fitted on the training data only and travel with the network.
``transfer`` fine-tunes a copy of a parent with its first layers frozen and the parent's scalers
kept (the frozen layers expect the inputs they were trained on); ``full`` trains from scratch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from driftwheel.config import DatasetSpec, TrainingConfig, TrendResidualConfig
from driftwheel.features import FeatureColumns, LabelHistory, build_features, iter_features, trend_level

logger = logging.getLogger(__name__)

HIDDEN_SIZES: tuple[int, ...] = (32, 32, 32, 50)
WEIGHTS_FILE = "weights.pt"
PREPROCESSING_FILE = "preprocessing.json"
HISTORY_FILE = "history.parquet"
REPLAY_FILE = "replay.parquet"
# Rows scored at once by TrendResidualModel.predict_residual.
PREDICT_BATCH_ROWS = 65_536


class PopularityNet(nn.Module):
    """Dense layers ``n -> 32 -> 32 -> 32 -> 50 -> 1`` with ReLU between them."""

    def __init__(self, n_features: int, hidden: tuple[int, ...] = HIDDEN_SIZES) -> None:
        super().__init__()
        sizes = (n_features, *hidden, 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x).squeeze(-1)


@dataclass(frozen=True)
class Preprocessing:
    features: tuple[str, ...]
    feature_mean: tuple[float, ...]
    feature_std: tuple[float, ...]
    target_mean: float
    target_std: float

    @classmethod
    def fit(cls, frame: pd.DataFrame, features: tuple[str, ...], target: str) -> Preprocessing:
        x = frame[list(features)].to_numpy(dtype=np.float64)
        y = frame[target].to_numpy(dtype=np.float64)
        std = x.std(axis=0)
        std[std == 0] = 1.0  # a constant column carries no signal; keep it harmless
        return cls(
            features=tuple(features),
            feature_mean=tuple(float(v) for v in x.mean(axis=0)),
            feature_std=tuple(float(v) for v in std),
            target_mean=float(y.mean()),
            target_std=float(y.std() or 1.0),
        )

    def transform(self, frame: pd.DataFrame) -> torch.Tensor:
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise KeyError(f"input lacks the model's features: {missing}")
        x = frame[list(self.features)].to_numpy(dtype=np.float32)
        x = (x - np.asarray(self.feature_mean, dtype=np.float32)) / np.asarray(self.feature_std, dtype=np.float32)
        return torch.from_numpy(x)

    def scale_target(self, y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((y - self.target_mean) / self.target_std).astype(np.float32))

    def unscale_target(self, y: torch.Tensor) -> np.ndarray:
        return y.detach().numpy().astype(np.float64) * self.target_std + self.target_mean


@dataclass
class TrainedModel:
    net: PopularityNet
    preprocessing: Preprocessing
    strategy: str
    train_seconds: float = 0.0
    epoch_losses: list[float] = field(default_factory=list)

    @property
    def input_columns(self) -> tuple[str, ...]:
        return self.preprocessing.features

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predicted popularity for each row of ``frame`` (raw, unscaled feature values)."""
        self.net.eval()
        with torch.no_grad():
            return self.preprocessing.unscale_target(self.net(self.preprocessing.transform(frame)))


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    # A network this small trains fastest on one thread; restore the caller's setting after.
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _minibatch_epochs(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch_size: int,
    seed: int,
) -> list[float]:
    """Seeded mini-batch gradient descent on the mean squared error; the mean loss per epoch."""
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(net(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / max(len(x), 1))
        logger.debug("epoch %d/%d: loss %.4f", epoch + 1, epochs, losses[-1])
    net.eval()
    return losses


def _fit(net: PopularityNet, x: torch.Tensor, y: torch.Tensor, epochs: int, config: TrainingConfig) -> list[float]:
    # Frozen layers (transfer learning) have requires_grad False and stay out of the optimizer.
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=config.study_net.learning_rate)
    return _minibatch_epochs(net, optimizer, x, y, epochs, config.study_net.batch_size, config.seed)


def train_full(frame: pd.DataFrame, features: tuple[str, ...], target: str, config: TrainingConfig) -> TrainedModel:
    """A new model trained from scratch on ``frame`` (scalers fitted on ``frame`` only)."""
    started = time.perf_counter()
    with _torch_threads(1):
        torch.manual_seed(config.seed)
        prep = Preprocessing.fit(frame, features, target)
        net = PopularityNet(len(features))
        losses = _fit(
            net,
            prep.transform(frame),
            prep.scale_target(frame[target].to_numpy(float)),
            config.study_net.epochs,
            config,
        )
    seconds = time.perf_counter() - started
    logger.info(
        "full training on %d rows, %d epochs: %.2f s, final loss %.4f",
        len(frame),
        config.study_net.epochs,
        seconds,
        losses[-1],
    )
    return TrainedModel(net, prep, "full", seconds, losses)


def fine_tune(parent: TrainedModel, frame: pd.DataFrame, target: str, config: TrainingConfig) -> TrainedModel:
    """A copy of ``parent`` with its first ``config.study_net.freeze_layers`` layers frozen, fine-tuned on ``frame``."""
    started = time.perf_counter()
    with _torch_threads(1):
        torch.manual_seed(config.seed)
        net = copy.deepcopy(parent.net)
        for i, layer in enumerate(net.layers):
            layer.requires_grad_(i >= config.study_net.freeze_layers)
        prep = parent.preprocessing
        losses = _fit(
            net,
            prep.transform(frame),
            prep.scale_target(frame[target].to_numpy(float)),
            config.study_net.fine_tune_epochs,
            config,
        )
        net.requires_grad_(True)
    seconds = time.perf_counter() - started
    logger.info(
        "transfer fine-tune on %d rows (%d of %d layers frozen), %d epochs: %.2f s, final loss %.4f",
        len(frame),
        config.study_net.freeze_layers,
        len(net.layers),
        config.study_net.fine_tune_epochs,
        seconds,
        losses[-1] if losses else float("nan"),
    )
    return TrainedModel(net, prep, "transfer", seconds, losses)


# -- trend_residual ------------------------------------------------------------------------------
class ResidualNet(nn.Module):
    """A small MLP with dropout; its output is the residual in units of the residual's std."""

    def __init__(self, n_features: int, hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        sizes = (n_features, *hidden, 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.dropout(torch.relu(layer(x)))
        return self.layers[-1](x).squeeze(-1)


def feature_columns(spec: DatasetSpec, frame: pd.DataFrame) -> FeatureColumns:
    """The spec's columns that ``frame`` has: absent features and text columns are left out."""

    def present(column: str | None) -> str | None:
        return column if column and column in frame.columns else None

    return FeatureColumns(
        numeric=tuple(f for f in spec.features if f in frame.columns),
        period=spec.period_column,
        target=spec.target,
        artist=present(spec.artist_column),
        title=present(spec.title_column),
        album=present(spec.album_column),
    )


@dataclass
class TrendResidualModel:
    """Trend level + residual ensemble, with everything it learnt from labels inside.

    ``replay`` holds featurized earlier rows (feature columns, ``residual``, ``period``, ``row_key``)
    for the next fine-tune; ``history`` is the label history the features are built from.
    """

    nets: list[ResidualNet]
    columns: FeatureColumns
    config: TrendResidualConfig
    features: tuple[str, ...]
    feature_mean: np.ndarray
    feature_std: np.ndarray
    residual_std: float
    history: LabelHistory
    replay: pd.DataFrame
    strategy: str = "trend_residual"
    train_seconds: float = 0.0
    feature_seconds: float = 0.0
    epoch_losses: list[float] = field(default_factory=list)

    @property
    def input_columns(self) -> tuple[str, ...]:
        return self.columns.inputs()

    @property
    def level_step(self) -> float | None:
        """A change of the yearly mean that counts as a step (FeatureConfig.step_sds residual sds)."""
        sds = self.config.features.step_sds
        return sds * self.residual_std if sds else None

    def level(self, periods: pd.Series) -> np.ndarray:
        """The label level of each row's period.

        A period the model has labels of gets their mean (over the rows it was fitted on); any
        later period, the trend of the means before it. Production only ever scores later periods;
        the gate scores the newest labelled period's held-out rows, and a challenger that has
        learnt the new level must be able to show it there.
        """
        known = self.history.period_means
        levels = {
            int(p): float(known[int(p)])
            if int(p) in known.index
            else trend_level(known, int(p), self.config.features.trend_window, self.level_step)
            for p in periods.unique()
        }
        return periods.astype(int).map(levels).to_numpy(float)

    def predict(self, frame: pd.DataFrame, rows: np.ndarray | None = None) -> np.ndarray:
        """Popularity for each row of ``frame`` (raw columns; pass a whole period's batch at once),
        or for the rows where ``rows`` is true only (their batch features still count every row).

        A row of period ``t`` reads the label history of periods before ``t`` only.
        """
        wanted = np.ones(len(frame), dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
        periods = frame[self.columns.period].to_numpy()
        predicted = np.full(len(frame), np.nan)
        # Slice by slice (features.FEATURE_BATCH_ROWS): a million-row period's features and
        # activations are never all alive at once.
        for positions, x in iter_features(self.history, frame, self.columns, self.config.features, rows=wanted):
            predicted[positions] = self.level(pd.Series(periods[positions])) + self.predict_residual(x)
        return predicted[wanted]

    def predict_residual(self, x: pd.DataFrame) -> np.ndarray:
        # In slices of PREDICT_BATCH_ROWS rows: a million rows' hidden activations at once would
        # cost a gigabyte. Each row's prediction depends on that row only.
        outputs = np.empty((len(self.nets), len(x)))
        with torch.no_grad():
            for start in range(0, len(x), PREDICT_BATCH_ROWS):
                scaled = self._scale(x.iloc[start : start + PREDICT_BATCH_ROWS])
                for i, net in enumerate(self.nets):
                    net.eval()
                    outputs[i, start : start + len(scaled)] = net(scaled).numpy()
        return np.mean(outputs, axis=0) * self.residual_std

    def _scale(self, x: pd.DataFrame) -> torch.Tensor:
        values = (x[list(self.features)].to_numpy(np.float64) - self.feature_mean) / self.feature_std
        return torch.from_numpy(values.astype(np.float32))


# Rows hashed at once by _row_keys: the hash is per row, so slices change nothing but the size of
# the temporary copy of the hashed columns.
HASH_BATCH_ROWS = 262_144


def _row_keys(frame: pd.DataFrame, columns: FeatureColumns) -> np.ndarray:
    """A hash of each row's content: the replay sample and the training order depend on what a row
    holds, never on where it sits, so shuffling the input changes nothing."""
    used = [*columns.inputs(), columns.target]
    keys = np.empty(len(frame), dtype=np.uint64)
    for start in range(0, len(frame), HASH_BATCH_ROWS):
        part = frame.iloc[start : start + HASH_BATCH_ROWS][used]
        keys[start : start + len(part)] = pd.util.hash_pandas_object(part, index=False).to_numpy(np.uint64)
    return keys


def smallest_keys(keys: np.ndarray, eligible: np.ndarray, limit: int | None) -> np.ndarray:
    """Positions of the eligible rows in ascending key order (ties in position order), at most
    ``limit`` of them: the first ``limit`` rows of a stable sort by key, found before any row is
    featurized. Keys are content hashes, so the rows kept are a uniform sample."""
    positions = np.flatnonzero(np.asarray(eligible, dtype=bool))
    ordered = positions[np.argsort(keys[positions], kind="stable")]
    return ordered if limit is None else ordered[:limit]


def _labelled_rows(
    history: LabelHistory,
    labelled: pd.DataFrame,
    fit: np.ndarray,
    columns: FeatureColumns,
    config: TrendResidualConfig,
    limit: int | None = None,
) -> tuple[pd.DataFrame, int]:
    """(featurized fit rows of ``labelled`` with their residual target, period and row key, sorted
    by key; the number of fit rows).

    With ``limit``, only the ``limit`` fit rows with the smallest keys are featurized: every
    sample a training draws from these rows (:func:`_fit_sample`, :func:`_replay_buffer`) is a
    prefix in key order, so a limit of at least the largest sample gives the same model as
    featurizing every row, at the memory of the sample (the batch statistics still count every
    row of a period).
    """
    keys = _row_keys(labelled, columns)
    chosen = smallest_keys(keys, fit, limit)
    wanted = np.zeros(len(labelled), dtype=bool)
    wanted[chosen] = True
    x = build_features(history, labelled, columns, config.features, rows=wanted)
    # x is in position order; put it in key order.
    x = x.iloc[np.searchsorted(np.flatnonzero(wanted), chosen)].reset_index(drop=True)
    period = labelled[columns.period].astype(int)
    residual = (labelled[columns.target].astype(float) - period.map(history.period_means)).to_numpy()
    rows = x.assign(residual=residual[chosen], period=period.to_numpy()[chosen], row_key=keys[chosen])
    return rows, int(np.count_nonzero(fit))


def _replay_buffer(rows: pd.DataFrame, size: int) -> pd.DataFrame:
    """The ``size`` rows with the smallest keys: a uniform sample of all rows ever seen that a
    later update can extend without revisiting old data (bottom-k sampling)."""
    return rows.sort_values("row_key", kind="stable").head(size).reset_index(drop=True)


def _fit_sample(rows: pd.DataFrame, max_rows: int, total: int | None = None) -> pd.DataFrame:
    """The rows a training fits: all of ``rows`` (sorted by ``row_key``) up to ``max_rows``, else the
    ``max_rows`` with the smallest keys, a uniform sample since the keys are content hashes.
    ``total``: how many rows ``rows`` was drawn from, for the log (default ``len(rows)``)."""
    if len(rows) > max_rows:
        logger.info("fitting a uniform sample of %d of %d rows (max_fit_rows)", max_rows, total or len(rows))
        return rows.head(max_rows)
    return rows


def _featurized_rows(config: TrendResidualConfig) -> int:
    """How many fit rows a training featurizes: the largest prefix in key order it can use."""
    return max(config.max_fit_rows, config.replay_buffer_rows)


def _fit_residual(
    net: ResidualNet, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, config: TrendResidualConfig, seed: int
) -> list[float]:
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=config.weight_decay)
    return _minibatch_epochs(net, optimizer, x, y, epochs, config.batch_size, seed)


def train_trend_residual(
    labelled: pd.DataFrame, fit: np.ndarray, columns: FeatureColumns, config: TrainingConfig
) -> TrendResidualModel:
    """A new trend_residual model from scratch.

    ``labelled`` holds whole periods (batch features count within a period); all of its labels
    enter the label history, which only features of later periods read. The networks fit, and the
    period means are taken over, only the rows where ``fit`` is true (the caller holds out the
    rows its gate scores).
    """
    cfg = config.trend_residual
    started = time.perf_counter()
    history = LabelHistory.from_labelled(labelled, columns, mean_rows=fit)
    rows, n_fit = _labelled_rows(history, labelled, fit, columns, cfg, limit=_featurized_rows(cfg))
    features = tuple(c for c in rows.columns if c not in ("residual", "period", "row_key"))
    built = time.perf_counter()
    buffer = _replay_buffer(rows, cfg.replay_buffer_rows)
    rows = _fit_sample(rows, cfg.max_fit_rows, total=n_fit)
    x = rows[list(features)].to_numpy(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[~(std > 0)] = 1.0  # a constant column carries no signal; keep it harmless
    residual_std = float(rows["residual"].std()) or 1.0
    scaled_x = torch.from_numpy(((x - mean) / std).astype(np.float32))
    scaled_y = torch.from_numpy((rows["residual"].to_numpy() / residual_std).astype(np.float32))
    nets: list[ResidualNet] = []
    losses: list[float] = []
    with _torch_threads(1):
        for member in range(cfg.ensemble_size):
            torch.manual_seed(config.seed + member)
            net = ResidualNet(len(features), cfg.hidden, cfg.dropout)
            losses = _fit_residual(net, scaled_x, scaled_y, cfg.epochs, cfg.learning_rate, cfg, config.seed + member)
            nets.append(net)
    finished = time.perf_counter()
    model = TrendResidualModel(
        nets,
        columns,
        cfg,
        features,
        mean,
        std,
        residual_std,
        history,
        buffer,
        train_seconds=finished - built,
        feature_seconds=built - started,
        epoch_losses=losses,
    )
    logger.info(
        "trend_residual from scratch on %d rows, %d features: features %.2f s, training %.2f s",
        len(rows),
        len(features),
        model.feature_seconds,
        model.train_seconds,
    )
    return model


def fine_tune_trend_residual(
    parent: TrendResidualModel, labelled: pd.DataFrame, fit: np.ndarray, config: TrainingConfig
) -> TrendResidualModel:
    """``parent`` updated with the periods in ``labelled``: their labels join the history (a
    period the parent already had is replaced), and every member is fine-tuned for a few epochs
    on the ``fit`` rows plus replayed earlier rows. Scalers stay the parent's."""
    cfg = config.trend_residual
    started = time.perf_counter()
    columns = parent.columns
    history = parent.history.updated(LabelHistory.from_labelled(labelled, columns, mean_rows=fit))
    new_rows, n_new = _labelled_rows(history, labelled, fit, columns, cfg, limit=_featurized_rows(cfg))
    built = time.perf_counter()
    replaced = set(int(p) for p in labelled[columns.period].unique())
    old = parent.replay[~parent.replay["period"].isin(replaced)]
    # The replay share is of every new fit row, featurized or not.
    n_replay = min(len(old), int(round(cfg.replay_share * n_new)))
    rng = np.random.default_rng([config.seed, max(replaced)])
    replayed = old.iloc[np.sort(rng.choice(len(old), size=n_replay, replace=False))] if n_replay else old.head(0)
    rows = _fit_sample(
        pd.concat([new_rows, replayed], ignore_index=True).sort_values("row_key", kind="stable"),
        cfg.max_fit_rows,
        total=n_new + n_replay,
    )
    scaled_x = torch.from_numpy(
        ((rows[list(parent.features)].to_numpy(np.float64) - parent.feature_mean) / parent.feature_std).astype(
            np.float32
        )
    )
    scaled_y = torch.from_numpy((rows["residual"].to_numpy() / parent.residual_std).astype(np.float32))
    nets: list[ResidualNet] = []
    losses: list[float] = []
    with _torch_threads(1):
        for member, parent_net in enumerate(parent.nets):
            net = copy.deepcopy(parent_net)
            seed = config.seed + member + 1000 * max(replaced)
            torch.manual_seed(seed)
            losses = _fit_residual(
                net, scaled_x, scaled_y, cfg.fine_tune_epochs, cfg.fine_tune_learning_rate, cfg, seed
            )
            nets.append(net)
    finished = time.perf_counter()
    buffer = _replay_buffer(pd.concat([old, new_rows], ignore_index=True), cfg.replay_buffer_rows)
    model = dataclasses.replace(
        parent,
        nets=nets,
        history=history,
        replay=buffer,
        config=_keeping_shape(cfg, parent.config),
        strategy="trend_residual",
        train_seconds=finished - built,
        feature_seconds=built - started,
        epoch_losses=losses,
    )
    logger.info(
        "trend_residual fine-tune on %d new + %d replayed rows: features %.2f s, training %.2f s",
        n_new,
        n_replay,
        model.feature_seconds,
        model.train_seconds,
    )
    return model


def _keeping_shape(config: TrendResidualConfig, parent: TrendResidualConfig) -> TrendResidualConfig:
    """``config`` with the parent's network shape: a fine-tune trains the parent's networks."""
    return dataclasses.replace(config, ensemble_size=parent.ensemble_size, hidden=parent.hidden, dropout=parent.dropout)


# -- saving and loading ----------------------------------------------------------------------------
AnyModel = TrainedModel | TrendResidualModel


def predict_rows(model: AnyModel, frame: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """``model``'s predictions for the rows of ``frame`` where ``rows`` is true, described as part
    of the whole batch: the memory of those rows' features, not of the batch's. The network sees
    other slices than when it scores the whole batch, so values may differ in float32 rounding."""
    if isinstance(model, TrendResidualModel):
        return model.predict(frame, rows=rows)
    return model.predict(frame[np.asarray(rows, dtype=bool)])


def save(model: AnyModel, directory: Path) -> dict[str, Path]:
    """Write the model to ``directory``; return its files by artifact name (see :func:`load`)."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    prep = directory / PREPROCESSING_FILE
    if isinstance(model, TrainedModel):
        torch.save(model.net.state_dict(), weights)
        prep.write_text(json.dumps({**asdict(model.preprocessing), "strategy": model.strategy}, indent=2))
        return {"weights": weights, "preprocessing": prep}
    torch.save({"members": [net.state_dict() for net in model.nets]}, weights)
    prep.write_text(
        json.dumps(
            {
                "kind": "trend_residual",
                "strategy": model.strategy,
                "columns": asdict(model.columns),
                "config": asdict(model.config),
                "features": list(model.features),
                "feature_mean": model.feature_mean.tolist(),
                "feature_std": model.feature_std.tolist(),
                "residual_std": model.residual_std,
            },
            indent=2,
        )
    )
    history = directory / HISTORY_FILE
    replay = directory / REPLAY_FILE
    model.history.save(history)
    model.replay.to_parquet(replay, index=False)
    return {"weights": weights, "preprocessing": prep, "history": history, "replay": replay}


def _tuples(saved: dict[str, Any]) -> dict[str, Any]:
    """Saved JSON fields with lists back as tuples (the frozen dataclasses hold tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}


def load(files: Mapping[str, Path]) -> AnyModel:
    """The model saved by :func:`save`, from its files by artifact name."""
    raw = json.loads(Path(files["preprocessing"]).read_text())
    if raw.get("kind") != "trend_residual":
        strategy = raw.pop("strategy", "full")
        prep = Preprocessing(**_tuples(raw))
        net = PopularityNet(len(prep.features))
        net.load_state_dict(torch.load(files["weights"], weights_only=True))
        net.eval()
        return TrainedModel(net, prep, strategy)
    columns = FeatureColumns(**_tuples(raw["columns"]))
    saved = raw["config"]
    if "shrinkage" in saved:  # saved before the feature knobs had their own section
        saved["features"] = {k: saved.pop(k) for k in ("shrinkage", "decay", "trend_window")}
    config = TrendResidualConfig(**saved)
    features = tuple(raw["features"])
    nets: list[ResidualNet] = []
    for state in torch.load(files["weights"], weights_only=True)["members"]:
        member = ResidualNet(len(features), config.hidden, config.dropout)
        member.load_state_dict(state)
        member.eval()
        nets.append(member)
    return TrendResidualModel(
        nets,
        columns,
        config,
        features,
        np.asarray(raw["feature_mean"]),
        np.asarray(raw["feature_std"]),
        float(raw["residual_std"]),
        LabelHistory.load(Path(files["history"])),
        pd.read_parquet(files["replay"]),
        strategy=raw["strategy"],
    )
