"""How far the inputs can take the default model: the benchmark's ``default`` row beside two rows
that are allowed to cheat.

    python benchmarks/ceiling.py --out DIR [--data CSV] [--warmup-end 2014] [--last-year 2019]
                                 [--column-map FILE] [--synthetic] [--state DIR]

For every scored year, the RMSE of the default model (``trend_residual`` with the default settings):

* ``production``: as the flywheel runs it with every challenger promoted (a cold start on the pooled
  warm-up years, then for each year: score it, fine-tune on its training split). On the seed data
  the gate promoted every year, so this equals ``benchmarks/prequential.py``'s ``default`` row;
* ``level known``: the same predictions, each year's mean error removed: what a trend that knew
  the year's mean exactly would give;
* ``level and 80 % of labels known``: the model trained from scratch on every earlier year and on
  four of five folds of this year (folds by a hash of the track id), scored on the fifth, for each
  fifth. It knows the year's mean and most of its labels; its features still read earlier years'
  labels only.

The two cheating rows are not policies (they read the scored year's labels): they say how much of
the distance to a goal a better level, or a model that adapted to the year before scoring it,
could close with these inputs. Writes DIR/ceiling.json and DIR/ceiling.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from prequential import curate, data_arguments, settings_from, within_year_std

from driftwheel import evaluate, store
from driftwheel import model as model_lib
from driftwheel.config import Settings

FOLDS = 5
ROWS = ("production", "level known", "level and 80 % of labels known", "within-year std")


def _rmse(errors: np.ndarray) -> float:
    return float(np.sqrt(np.mean(errors**2)))


def curated_years(settings: Settings, years: list[int]) -> pd.DataFrame:
    """Every year's validated rows, curated exactly as the flywheel's validate step curates them."""
    curate(settings, [y for y in years if not store.has_partition(settings.curated_dir, y)])
    return store.read_partitions(settings.curated_dir, years)


def production(settings: Settings, data: pd.DataFrame, eval_years: list[int]) -> dict[int, np.ndarray]:
    """Each scored year's errors (prediction minus label) of the default model, promoted every year."""
    spec, cfg = settings.dataset, settings.training
    fraction = settings.gate.holdout_fraction
    year = data[spec.period_column].astype(int)
    warm = data[(year >= cfg.warmup_start) & (year <= cfg.warmup_end)]
    last_warm = (warm[spec.period_column].astype(int) == cfg.warmup_end).to_numpy()
    fit = ~(last_warm & evaluate.holdout_mask(warm[spec.id_column], fraction))
    model = model_lib.train_trend_residual(warm, fit, model_lib.feature_columns(spec, warm), cfg)
    errors: dict[int, np.ndarray] = {}
    for period in eval_years:
        current = data[year == period]
        errors[period] = model.predict(current) - current[spec.target].to_numpy(float)
        print(f"production {period}: RMSE {_rmse(errors[period]):.3f}", flush=True)
        model = model_lib.fine_tune_trend_residual(
            model, current, ~evaluate.holdout_mask(current[spec.id_column], fraction), cfg
        )
    return errors


def labels_known(settings: Settings, data: pd.DataFrame, period: int) -> np.ndarray:
    """The year's errors, each fold scored by a model trained on every earlier year and the other folds."""
    spec, cfg = settings.dataset, settings.training
    year = data[spec.period_column].astype(int)
    labelled = data[(year >= cfg.warmup_start) & (year <= period)]
    in_period = (labelled[spec.period_column].astype(int) == period).to_numpy()
    hashes = pd.util.hash_pandas_object(labelled[spec.id_column].astype(str), index=False).to_numpy()
    fold = hashes % FOLDS
    columns = model_lib.feature_columns(spec, labelled)
    current = labelled[in_period]
    errors = np.full(len(current), np.nan)
    for k in range(FOLDS):
        scored = in_period & (fold == k)
        model = model_lib.train_trend_residual(labelled, ~scored, columns, cfg)
        rows = fold[in_period] == k
        errors[rows] = model.predict(current, rows=rows) - current[spec.target].to_numpy(float)[rows]
    print(f"level and labels known {period}: RMSE {_rmse(errors):.3f}", flush=True)
    return errors


def write_markdown(table: dict[str, dict[int, float]], path: Path, command: str, data_label: str) -> None:
    years = sorted(table["production"])
    lines = [
        f"# How far the inputs go: {data_label}",
        "",
        f"`{command}`",
        "",
        "RMSE of the default model on each year (lower is better). Only `production` is a policy; the",
        "rows below it read the scored year's labels (see benchmarks/ceiling.py).",
        "",
        "| | " + " | ".join(map(str, years)) + " | mean |",
        "|---|" + "---|" * (len(years) + 1),
    ]
    for row in ROWS:
        values = [table[row][y] for y in years]
        lines.append(f"| {row} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {np.mean(values):.3f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data_arguments(parser)
    args = parser.parse_args(argv)
    settings, years, eval_years, data_label = settings_from(args)
    out = args.out.resolve()
    data = curated_years(settings, years)

    served = production(settings, data, eval_years)
    table: dict[str, dict[int, float]] = {
        "production": {y: _rmse(e) for y, e in served.items()},
        "level known": {y: _rmse(e - e.mean()) for y, e in served.items()},
        "level and 80 % of labels known": {y: _rmse(labels_known(settings, data, y)) for y in eval_years},
        "within-year std": within_year_std(settings, eval_years),
    }
    command = "python benchmarks/ceiling.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (out / "ceiling.json").write_text(json.dumps({row: table[row] for row in ROWS}, indent=2))
    write_markdown(table, out / "ceiling.md", command, data_label)
    print((out / "ceiling.md").read_text())
    print(f"wrote {out / 'ceiling.json'}, {out / 'ceiling.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
