"""The popularity regressor: the study's dense 32-32-32-50-1 network with its preprocessing.

Scalers (feature and target standardization) are fitted on the training data only and travel
with the network, so a saved model predicts from raw feature values. ``transfer`` fine-tunes a
copy of a parent model with its first layers frozen and the parent's scalers kept (the frozen
layers expect the inputs they were trained on); ``full`` trains from scratch.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from driftwheel.config import TrainingConfig

logger = logging.getLogger(__name__)

HIDDEN_SIZES: tuple[int, ...] = (32, 32, 32, 50)
WEIGHTS_FILE = "weights.pt"
PREPROCESSING_FILE = "preprocessing.json"


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


def _fit(
    net: PopularityNet,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    config: TrainingConfig,
) -> list[float]:
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.learning_rate)
    loss_fn = nn.MSELoss()
    generator = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), config.batch_size):
            idx = order[start : start + config.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(net(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
        logger.debug("epoch %d/%d: loss %.4f", epoch + 1, epochs, losses[-1])
    return losses


def train_full(frame: pd.DataFrame, features: tuple[str, ...], target: str, config: TrainingConfig) -> TrainedModel:
    """A new model trained from scratch on ``frame`` (scalers fitted on ``frame`` only)."""
    started = time.perf_counter()
    with _torch_threads(1):
        torch.manual_seed(config.seed)
        prep = Preprocessing.fit(frame, features, target)
        net = PopularityNet(len(features))
        losses = _fit(net, prep.transform(frame), prep.scale_target(frame[target].to_numpy(float)), config.epochs, config)
    seconds = time.perf_counter() - started
    logger.info("full training on %d rows, %d epochs: %.2f s, final loss %.4f", len(frame), config.epochs, seconds, losses[-1])
    return TrainedModel(net, prep, "full", seconds, losses)


def fine_tune(parent: TrainedModel, frame: pd.DataFrame, target: str, config: TrainingConfig) -> TrainedModel:
    """A copy of ``parent`` with its first ``config.freeze_layers`` layers frozen, fine-tuned on ``frame``."""
    started = time.perf_counter()
    with _torch_threads(1):
        torch.manual_seed(config.seed)
        net = copy.deepcopy(parent.net)
        for i, layer in enumerate(net.layers):
            layer.requires_grad_(i >= config.freeze_layers)
        prep = parent.preprocessing
        losses = _fit(net, prep.transform(frame), prep.scale_target(frame[target].to_numpy(float)), config.fine_tune_epochs, config)
        net.requires_grad_(True)
    seconds = time.perf_counter() - started
    logger.info(
        "transfer fine-tune on %d rows (%d of %d layers frozen), %d epochs: %.2f s, final loss %.4f",
        len(frame),
        config.freeze_layers,
        len(net.layers),
        config.fine_tune_epochs,
        seconds,
        losses[-1] if losses else float("nan"),
    )
    return TrainedModel(net, prep, "transfer", seconds, losses)


def save(model: TrainedModel, directory: Path) -> dict[str, Path]:
    """Write the weights and preprocessing to ``directory``; return the files by artifact name."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    prep = directory / PREPROCESSING_FILE
    torch.save(model.net.state_dict(), weights)
    prep.write_text(json.dumps({**asdict(model.preprocessing), "strategy": model.strategy}, indent=2))
    return {"weights": weights, "preprocessing": prep}


def load(weights: Path, preprocessing: Path) -> TrainedModel:
    raw = json.loads(Path(preprocessing).read_text())
    strategy = raw.pop("strategy", "full")
    prep = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    net = PopularityNet(len(prep.features))
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    return TrainedModel(net, prep, strategy)
