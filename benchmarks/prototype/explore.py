"""Prototype: a leak-free popularity model + retraining policy for the driftwheel flywheel.

Run:  cd /work/main && .venv/bin/python benchmarks/prototype/explore.py [--quick] [--seeds N]

Protocol (prequential, every policy below follows it):
  * base model trained on 2008-2014;
  * for each year Y in 2015..2019: features of Y's rows are built from years < Y (with their
    labels) and from Y's batch WITHOUT its label column; Y is predicted with the model trained on
    years < Y and scored (RMSE); only then may the model be updated with Y's labels.

Prediction = level(Y) + residual model(x).
  level(Y): linear fit through the last 4 yearly mean popularities (years < Y), extrapolated to Y.
  residual model: trained on popularity - (true mean of the row's own, earlier, year).

Checks: (1) permutation: shuffling Y's rows (and the history's rows) must leave Y's RMSE unchanged;
(2) label scramble: replacing Y's labels with noise must leave Y's predictions unchanged.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import dataclass, replace

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import pandas as pd
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import feats as F  # noqa: E402

torch.set_num_threads(1)  # small nets train fastest on one thread; leaves a core for others

BASE_YEARS = list(range(2008, 2015))
EVAL_YEARS = list(range(2015, 2020))
TREND_K = 4


# ---------------------------------------------------------------------------------------------
# data stream: features of each year are built when the year arrives, from years < Y only
# ---------------------------------------------------------------------------------------------
class Stream:
    """Holds the labelled past and the as-of features of every year seen so far."""

    def __init__(self, df: pd.DataFrame) -> None:
        self.df = df
        self.X: dict[int, pd.DataFrame] = {}
        self.y: dict[int, np.ndarray] = {}
        self.feature_seconds: dict[int, float] = {}

    def arrive(self, year: int) -> pd.DataFrame:
        """Year's batch arrives (labels withheld): build its features from years < year only."""
        t = time.perf_counter()
        hist = self.df[self.df["year"] < year]
        batch = self.df[self.df["year"] == year].drop(columns=[F.TARGET])
        self.X[year] = F.year_features(hist, batch, year)
        self.feature_seconds[year] = time.perf_counter() - t
        return self.X[year]

    def reveal(self, year: int) -> np.ndarray:
        """Year's labels become available (after it has been scored)."""
        self.y[year] = self.df.loc[self.df["year"] == year, F.TARGET].to_numpy(np.float64)
        return self.y[year]

    def means(self) -> pd.Series:
        return pd.Series({y: v.mean() for y, v in sorted(self.y.items())})

    def residuals(self, year: int) -> np.ndarray:
        return self.y[year] - self.y[year].mean()


def trend_level(means: pd.Series, year: int, k: int = TREND_K) -> float:
    assert (means.index < year).all()
    return F.trend_level(means, year, k)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


# ---------------------------------------------------------------------------------------------
# the PyTorch residual model
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetConfig:
    features: tuple[str, ...] | None = None  # None: every column of feats.year_features
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.3
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    ft_epochs: int = 4
    ft_lr: float = 5e-4
    replay: float = 0.5  # replayed earlier rows, as a share of the new year's rows
    freeze: int = 0  # number of leading Linear layers frozen during a fine-tune
    seed: int = 0


class ResidualNet(nn.Module):
    def __init__(self, n_in: int, hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        sizes = (n_in, *hidden, 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.drop(torch.relu(layer(x)))
        return self.layers[-1](x).squeeze(-1)


@dataclass
class Scaler:
    """Feature and target standardization, fitted on training rows only."""

    mu: np.ndarray
    sd: np.ndarray
    ysd: float

    @classmethod
    def fit(cls, X: pd.DataFrame, r: np.ndarray) -> Scaler:
        sd = X.std().to_numpy(np.float64)
        sd[~(sd > 0)] = 1.0
        return cls(X.mean().to_numpy(np.float64), sd, float(r.std()))

    def x(self, X: pd.DataFrame) -> torch.Tensor:
        return torch.from_numpy(((X.to_numpy(np.float64) - self.mu) / self.sd).astype(np.float32))

    def y(self, r: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((r / self.ysd).astype(np.float32))


class NetModel:
    def __init__(self, cfg: NetConfig) -> None:
        self.cfg = cfg
        self.net: ResidualNet | None = None
        self.scaler: Scaler | None = None
        self.cols: list[str] = []
        self.rng = np.random.default_rng(cfg.seed)

    def _xy(self, stream: Stream, years: list[int]) -> tuple[pd.DataFrame, np.ndarray]:
        X = pd.concat([stream.X[y][self.cols] for y in years], ignore_index=True)
        r = np.concatenate([stream.residuals(y) for y in years])
        return X, r

    def _fit(self, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> None:
        c = self.cfg
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=c.weight_decay)
        g = torch.Generator().manual_seed(c.seed)
        self.net.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=g)
            for s in range(0, len(x), c.batch_size):
                i = order[s : s + c.batch_size]
                opt.zero_grad()
                loss = ((self.net(x[i]) - y[i]) ** 2).mean()
                loss.backward()
                opt.step()

    def train_full(self, stream: Stream, years: list[int]) -> float:
        """From scratch on ``years``; scalers refitted on those rows. Returns seconds."""
        t = time.perf_counter()
        c = self.cfg
        self.cols = list(c.features or stream.X[years[0]].columns)
        X, r = self._xy(stream, years)
        self.scaler = Scaler.fit(X, r)
        torch.manual_seed(c.seed)
        self.net = ResidualNet(len(self.cols), c.hidden, c.dropout)
        self._fit(self.scaler.x(X), self.scaler.y(r), c.epochs, c.lr)
        return time.perf_counter() - t

    def fine_tune(self, stream: Stream, year: int, earlier: list[int]) -> float:
        """Transfer step: keep the scalers, freeze the first layers, train on year (+ replay)."""
        t = time.perf_counter()
        c = self.cfg
        Xn, rn = self._xy(stream, [year])
        n_rep = int(round(c.replay * len(Xn)))
        if n_rep:
            Xp, rp = self._xy(stream, earlier)
            idx = self.rng.choice(len(Xp), size=min(n_rep, len(Xp)), replace=False)
            Xn = pd.concat([Xn, Xp.iloc[idx]], ignore_index=True)
            rn = np.concatenate([rn, rp[idx]])
        for i, layer in enumerate(self.net.layers):
            layer.requires_grad_(i >= c.freeze)
        torch.manual_seed(c.seed + year)
        self._fit(self.scaler.x(Xn), self.scaler.y(rn), c.ft_epochs, c.ft_lr)
        self.net.requires_grad_(True)
        return time.perf_counter() - t

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        self.net.eval()
        with torch.no_grad():
            return self.net(self.scaler.x(X[self.cols])).numpy().astype(np.float64) * self.scaler.ysd


class Ensemble:
    """Several NetModels with different seeds, predictions averaged."""

    def __init__(self, cfg: NetConfig, n: int) -> None:
        self.members = [NetModel(replace(cfg, seed=cfg.seed + i)) for i in range(n)]

    def train_full(self, stream: Stream, years: list[int]) -> float:
        return sum(m.train_full(stream, years) for m in self.members)

    def fine_tune(self, stream: Stream, year: int, earlier: list[int]) -> float:
        return sum(m.fine_tune(stream, year, earlier) for m in self.members)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.mean([m.predict(X) for m in self.members], axis=0)


# ---------------------------------------------------------------------------------------------
# the study's network on the 13 audio features (reference), predicting the residual
# ---------------------------------------------------------------------------------------------
STUDY = NetConfig(features=F.AUDIO, hidden=(32, 32, 32, 50), dropout=0.0, epochs=30, batch_size=32,
                  lr=1e-3, weight_decay=0.0, ft_epochs=30, ft_lr=1e-3, replay=0.0, freeze=3)


# ---------------------------------------------------------------------------------------------
# one prequential run
# ---------------------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    rmse: dict[int, float]
    update_seconds: dict[int, float]
    base_seconds: float = 0.0
    perm_max_diff: float | None = None
    scramble_max_diff: float | None = None

    @property
    def mean(self) -> float:
        return float(np.mean([self.rmse[y] for y in EVAL_YEARS]))


def _shuffled(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def prequential(df: pd.DataFrame, name: str, make_model=None, policy: str = "none",
                level: str = "trend", checks: bool = False) -> Result:
    """policy: 'none' (base model only), 'transfer' (fine-tune each year), 'full' (retrain on all years)."""
    stream = Stream(df)
    for y in BASE_YEARS:
        stream.arrive(y)
        stream.reveal(y)
    model = make_model() if make_model else None
    base_s = model.train_full(stream, BASE_YEARS) if model else 0.0
    out: dict[int, float] = {}
    upd: dict[int, float] = {}
    perm_diff, scr_diff = 0.0, 0.0
    for Y in EVAL_YEARS:
        X = stream.arrive(Y)  # labels of Y are not visible here
        means = stream.means()  # years < Y only
        if level == "trend":
            lvl = trend_level(means, Y)
        elif level == "oracle":  # DIAGNOSTIC ONLY: uses year Y's labels, not a valid policy
            lvl = float(df.loc[df["year"] == Y, F.TARGET].mean())
        elif level == "prev":
            lvl = float(means.iloc[-1])
        else:
            raise ValueError(level)
        pred = lvl + (model.predict(X) if model else 0.0)
        truth = stream.reveal(Y)  # revealed only now, to score
        out[Y] = rmse(truth, pred)
        if checks and model is not None:
            # (1) permutation: shuffle the whole past and year Y's rows, rebuild Y's features
            past = df[df["year"] < Y]
            cur = df[df["year"] == Y]
            for s in range(3):
                pdf = pd.concat([_shuffled(past, 100 + s), _shuffled(cur, 200 + s)], ignore_index=True)
                Xp = F.year_features(pdf[pdf["year"] < Y], pdf[pdf["year"] == Y].drop(columns=[F.TARGET]), Y)
                rp = rmse(pdf.loc[pdf["year"] == Y, F.TARGET].to_numpy(float), lvl + model.predict(Xp))
                perm_diff = max(perm_diff, abs(rp - out[Y]))
            # (2) label scramble: Y's labels replaced by noise must not move Y's predictions
            sdf = df.copy()
            m = sdf["year"] == Y
            sdf.loc[m, F.TARGET] = np.random.default_rng(Y).integers(0, 100, int(m.sum()))
            Xs = F.year_features(sdf[sdf["year"] < Y], sdf[m].drop(columns=[F.TARGET]), Y)
            scr_diff = max(scr_diff, float(np.max(np.abs(model.predict(Xs) - model.predict(X)))))
        # -- update with Y's labels, then move on ---------------------------------------------
        if model is not None and Y != EVAL_YEARS[-1]:
            if policy == "transfer":
                upd[Y] = model.fine_tune(stream, Y, [y for y in stream.y if y < Y])
            elif policy == "full":
                upd[Y] = model.train_full(stream, sorted(stream.y))
    return Result(name, out, upd, base_s, perm_diff if checks else None, scr_diff if checks else None)


# ---------------------------------------------------------------------------------------------
# non-torch ceiling reference: gradient boosting, full retrain on all history every year
# ---------------------------------------------------------------------------------------------
class GBMModel:
    def __init__(self) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor

        self.make = lambda: HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, max_leaf_nodes=15,
                                                          min_samples_leaf=40, l2_regularization=1.0, random_state=0)

    def train_full(self, stream: Stream, years: list[int]) -> float:
        t = time.perf_counter()
        X = pd.concat([stream.X[y] for y in years], ignore_index=True)
        r = np.concatenate([stream.residuals(y) for y in years])
        self.m = self.make().fit(X, r)
        return time.perf_counter() - t

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.m.predict(X)


# ---------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the slow references (study net, GBM, full retrains)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds for the single-net variants (mean reported)")
    args = ap.parse_args()

    df = F.load()
    best = NetConfig()
    results: list[Result] = []

    def seeds_avg(name: str, cfg: NetConfig, policy: str, n: int, **kw) -> Result:
        rs = [prequential(df, name, lambda s=s: NetModel(replace(cfg, seed=s)), policy, **kw) for s in range(n)]
        r = Result(name, {y: float(np.mean([x.rmse[y] for x in rs])) for y in EVAL_YEARS},
                   {y: float(np.mean([x.update_seconds[y] for x in rs])) for y in rs[0].update_seconds},
                   float(np.mean([x.base_seconds for x in rs])))
        if n > 1:
            r.name += f" [avg {n} seeds: {'/'.join(f'{x.mean:.3f}' for x in rs)}]"
        return r

    results.append(prequential(df, "previous year's mean", level="prev"))
    results.append(prequential(df, f"trend level only (lin. fit last {TREND_K} yearly means)"))
    if not args.quick:
        results.append(seeds_avg("study net (13 audio, 32-32-32-50-1, freeze 3) on residual + trend", STUDY, "transfer", 1))
        results.append(prequential(df, "GBM all features, full retrain yearly (non-torch ref.)", GBMModel, "full"))
        results.append(seeds_avg("MLP, never retrained (history feats still updated)", best, "none", args.seeds))
        results.append(seeds_avg("MLP, FULL retrain on all years yearly", best, "full", args.seeds))
        audio_free = tuple(c for c in F.year_features(df[df.year < 2010], df[df.year == 2010].drop(columns=[F.TARGET]), 2010).columns if c not in F.AUDIO)
        results.append(seeds_avg("MLP without the 13 audio features, transfer", replace(best, features=audio_free), "transfer", args.seeds))
    results.append(seeds_avg("MLP, transfer (fine-tune + 50% replay)", best, "transfer", args.seeds))
    ens = prequential(df, "BEST: 3-seed MLP ensemble, transfer (fine-tune + 50% replay)",
                      lambda: Ensemble(best, 3), "transfer", checks=True)
    results.append(ens)
    if not args.quick:
        diag = prequential(df, "DIAGNOSTIC ONLY (uses Y's true mean): MLP transfer, oracle level",
                           lambda: NetModel(best), "transfer", level="oracle")
        results.append(diag)

    print("\nPer-year RMSE (prequential; each year scored before its labels are used)")
    head = f"{'variant':<90}" + "".join(f"{y:>7}" for y in EVAL_YEARS) + f"{'mean':>8}"
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r.name:<90}" + "".join(f"{r.rmse[y]:>7.2f}" for y in EVAL_YEARS) + f"{r.mean:>8.3f}")

    print("\nTimings (1 torch thread; seconds; 'yearly update' = fine-tune or full retrain after each year)")
    for r in results:
        if r.base_seconds or r.update_seconds:
            u = list(r.update_seconds.values())
            print(f"  {r.name[:66]:<68} base train {r.base_seconds:6.2f}   yearly update mean {np.mean(u) if u else 0:6.2f}"
                  f"  max {max(u) if u else 0:6.2f}")
    s = Stream(df)
    for y in EVAL_YEARS:
        s.arrive(y)
    print(f"  feature build per year (history lookups + batch stats): mean {np.mean(list(s.feature_seconds.values())):.2f} s")

    print("\nSanity checks on the best model")
    print(f"  permutation (shuffle history and year Y rows, 3 times per year): max |delta RMSE| = {ens.perm_max_diff:.2e}")
    print(f"  label scramble (Y's labels replaced by noise): max |delta prediction| = {ens.scramble_max_diff:.2e}")
    ok = ens.perm_max_diff < 1e-4 and ens.scramble_max_diff == 0.0
    print("  PASS" if ok else "  FAIL")


if __name__ == "__main__":
    main()
