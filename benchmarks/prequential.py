"""Prequential benchmark: replay the flywheel year by year under several policies.

    python benchmarks/prequential.py --data CSV --out DIR [--warmup-end 2014] [--last-year 2019]
                                     [--column-map FILE] [--state DIR]

(``make bench``, or with the venv's python, which finds the library through its .pth file;
``make bench-docs`` regenerates docs/benchmark/ on the seed data and the synthetic source.)

For every policy, the periods run through :func:`driftwheel.replay.replay`: the same library steps
as the DAG's tasks, in the DAG's order (ingest, validate, drift, decide, retrain, gate, promote;
:mod:`driftwheel.steps`), in a state directory of its own (DIR/state/<policy>, with its own MLflow store). A period's score is the
champion's production RMSE, taken by the drift step on the whole period *before* anything is
trained on its labels. Policies differ only in configuration:

The study's three policies promote every model they train, as the study did (no gate):

* ``static``: the study network trained once on the warm-up years, never retrained;
* ``study_transfer``: the study's transfer learning, first 3 of 5 layers frozen, the last 2
  fine-tuned whenever production RMSE > 3.5;
* ``full_retrain``: the study network retrained from scratch on the latest year, every year;
and then

* ``previous_mean``: no model, every track gets the previous year's mean popularity;
* ``default``: the project's defaults (``trend_residual``, retrained every period, bootstrap-gated);
* ``default_drift_triggered``: the same, retrained only when a drift or error rule fires;
* ``default_from_scratch``: the same model and decisions, but every retrain starts from scratch
  on all labelled years instead of fine-tuning (the cost reference).

Writes DIR/benchmark.json, DIR/benchmark.md and DIR/benchmark.png. Without ``--data`` it uses the
seed CSV from ../shared when present, else the synthetic source (``--synthetic`` forces it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from driftwheel import evaluate, steps, store
from driftwheel.config import Settings, load_column_map
from driftwheel.policies import BENCHMARK_POLICIES, Policy
from driftwheel.policies import POLICIES as ALL_POLICIES
from driftwheel.replay import PeriodOutcome, replay
from driftwheel.sources import file as file_source

REPO = Path(__file__).resolve().parents[1]
SEED_CSV = REPO.parent / "shared" / "data" / "spotify_seed" / "tracks_2008_2019.csv"
# The benchmark's policies, in its table's order; their definitions are the product's (driftwheel.policies).
POLICIES: tuple[Policy, ...] = tuple(ALL_POLICIES[name] for name in BENCHMARK_POLICIES)


@dataclass
class YearResult:
    year: int
    production_rmse: float | None = None
    decision: str | None = None
    retrained: bool = False
    promoted: bool = False
    challenger_rmse: float | None = None
    train_seconds: float | None = None
    feature_seconds: float | None = None
    step_seconds: float | None = None  # wall time of the whole retrain step, MLflow logging included
    from_scratch: bool | None = None


@dataclass
class PolicyResult:
    policy: Policy
    years: dict[int, YearResult] = field(default_factory=dict)


# -- running --------------------------------------------------------------------------------------
def run_policy(policy: Policy, base: Settings, years: list[int]) -> PolicyResult:
    """Replay ``years`` through the flywheel's steps under ``policy``, in a fresh state directory."""
    assert policy.configure is not None
    state = base.state_dir / policy.name
    shutil.rmtree(state, ignore_errors=True)
    settings = policy.configure(
        dataclasses.replace(
            base, state_dir=state, experiment_name=f"benchmark-{policy.name}", model_name=f"benchmark_{policy.name}"
        )
    )
    result = PolicyResult(policy)

    def record(outcome: PeriodOutcome) -> None:
        out = YearResult(outcome.period, outcome.drift["production_rmse"], outcome.decision.action)
        if outcome.challenger is not None and outcome.gate is not None:
            out.retrained = True
            out.step_seconds = outcome.retrain_seconds
            out.train_seconds = outcome.challenger["train_seconds"]
            out.feature_seconds = outcome.challenger.get("feature_seconds")
            out.from_scratch = outcome.challenger.get("from_scratch")
            out.challenger_rmse = outcome.gate["challenger_rmse"]
            out.promoted = outcome.promotion is not None and bool(outcome.promotion["promoted"])
        result.years[out.year] = out
        print(
            f"{policy.name:<21} {out.year}  production RMSE {_fmt(out.production_rmse):>6}  {out.decision:<7} "
            f"challenger {_fmt(out.challenger_rmse):>6}  promoted {str(out.promoted):<5}  "
            f"train {_fmt(out.train_seconds, 3):>6} s  features {_fmt(out.feature_seconds, 2):>5} s  "
            f"({outcome.seconds:.1f} s)",
            flush=True,
        )

    replay(settings, years, on_period=record)
    return result


def previous_mean(settings: Settings, policy: Policy, years: list[int]) -> PolicyResult:
    """The no-model baseline, scored on the curated periods another policy validated."""
    spec = settings.dataset
    result = PolicyResult(policy)
    for year in years:
        # The gate's baseline, scored on the whole period instead of its held-out split.
        level = evaluate.previous_level(settings.curated_dir, year, spec.target)
        if level is None:
            continue
        truth = store.read_partition(settings.curated_dir, year)[spec.target]
        result.years[year] = YearResult(year, production_rmse=evaluate.rmse(truth, np.full(len(truth), level)))
        print(f"{policy.name:<21} {year}  production RMSE {result.years[year].production_rmse:6.2f}", flush=True)
    return result


def curate(settings: Settings, years: list[int]) -> None:
    """Ingest and validate ``years`` into ``settings``' curated data, as the flywheel's first two steps."""
    for year in years:
        steps.ingest_tracks(settings, year)
        steps.validate_tracks(settings, year)
        store.mark_finished(settings.curated_dir, year)  # curated only: no run to finish


def within_year_std(settings: Settings, years: list[int]) -> dict[int, float]:
    """RMSE of knowing each year's mean exactly (an oracle, for reference only)."""
    target = settings.dataset.target
    return {y: float(store.read_partition(settings.curated_dir, y)[target].std(ddof=0)) for y in years}


# -- reporting -------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(results: list[PolicyResult], eval_years: list[int], oracle: dict[int, float]) -> dict[str, Any]:
    policies: dict[str, Any] = {}
    for r in results:
        per_year = {str(y): r.years[y].production_rmse for y in eval_years if y in r.years}
        scored = [v for v in per_year.values() if v is not None]
        retrains = [r.years[y] for y in eval_years if y in r.years and r.years[y].retrained]
        first = next((y for y in r.years.values() if y.retrained), None)
        policies[r.policy.name] = {
            "description": r.policy.description,
            "per_year": per_year,
            "mean": _mean(scored) if len(scored) == len(eval_years) else None,
            # Mean network-training time of the retrains after the warm-up (what a yearly update costs).
            "retrain_seconds": _mean([y.train_seconds for y in retrains if y.train_seconds is not None]),
            "feature_seconds": _mean([y.feature_seconds for y in retrains if y.feature_seconds is not None]),
            "retrain_step_seconds": _mean([y.step_seconds for y in retrains if y.step_seconds is not None]),
            "cold_start_seconds": first.train_seconds if first else None,
            "retrained": [y.year for y in retrains],
            "promoted": [y.year for y in retrains if y.promoted],
            "decisions": {str(y): r.years[y].decision for y in sorted(r.years) if r.years[y].decision},
        }
    return {
        "policies": policies,
        "references": {
            "within_year_std": {
                "per_year": {str(y): v for y, v in oracle.items()},
                "mean": _mean(list(oracle.values())),
            }
        },
        "eval_years": eval_years,
    }


def write_markdown(summary: dict[str, Any], path: Path, command: str, data_label: str) -> None:
    years = summary["eval_years"]
    lines = [
        f"# Prequential benchmark: {data_label}",
        "",
        f"`{command}`",
        "",
        "RMSE of the champion on each year, scored before the year's labels are seen (lower is better).",
        "",
        "| policy | " + " | ".join(map(str, years)) + " | mean | retrained | promoted |",
        "|---|" + "---|" * (len(years) + 3),
    ]
    best = min((p["mean"] for p in summary["policies"].values() if p["mean"] is not None), default=None)
    for name, p in summary["policies"].items():
        mean = _fmt(p["mean"])
        if p["mean"] is not None and p["mean"] == best:
            mean = f"**{mean}**"
        cells = [_fmt(p["per_year"].get(str(y))) for y in years]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {mean} | {', '.join(map(str, p['retrained'])) or '-'} | "
            f"{', '.join(map(str, p['promoted'])) or '-'} |"
        )
    oracle = summary["references"]["within_year_std"]
    lines.append(
        "| *within-year std (knows each year's mean; not a policy)* | "
        + " | ".join(_fmt(oracle["per_year"].get(str(y))) for y in years)
        + f" | *{_fmt(oracle['mean'])}* | | |"
    )
    lines += [
        "",
        "Retrain cost (seconds, mean over the retrains after the warm-up; network training, then building",
        "the features, then the whole retrain step including MLflow logging; one torch thread):",
        "",
        "| policy | training | features | whole step | cold start (training) |",
        "|---|---|---|---|---|",
    ]
    for name, p in summary["policies"].items():
        if p["retrain_seconds"] is None and p["cold_start_seconds"] is None:
            continue
        lines.append(
            f"| {name} | {_fmt(p['retrain_seconds'], 3)} | {_fmt(p['feature_seconds'], 3)} | "
            f"{_fmt(p['retrain_step_seconds'], 2)} | {_fmt(p['cold_start_seconds'], 2)} |"
        )
    lines += ["", "Policies:", ""]
    lines += [f"- `{name}`: {p['description']}" for name, p in summary["policies"].items()]
    lines += ["", "![RMSE per year](benchmark.png)", ""]
    path.write_text("\n".join(lines))


def write_plot(summary: dict[str, Any], path: Path, data_label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    years = summary["eval_years"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, p in summary["policies"].items():
        ys = [p["per_year"].get(str(y)) for y in years]
        points = [(y, v) for y, v in zip(years, ys) if v is not None]
        if not points:
            continue
        (line,) = ax.plot(
            *zip(*points),
            marker="o",
            markersize=4,
            linewidth=2.2 if name == "default" else 1.3,
            label=f"{name} ({_fmt(p['mean'])})",
        )
        # A retrain after year Y changes the model that scores Y+1: mark it on Y's point.
        for y, v in points:
            if y in p["retrained"]:
                ax.scatter([y], [v], s=110, facecolors="none", edgecolors=line.get_color(), linewidths=1.4)
            if y in p["promoted"]:
                ax.scatter([y], [v], s=45, marker="*", color="black", zorder=5)
    oracle = summary["references"]["within_year_std"]["per_year"]
    ax.plot(years, [oracle[str(y)] for y in years], color="grey", linestyle=":", label="within-year std (oracle)")
    ax.scatter([], [], s=110, facecolors="none", edgecolors="black", label="retrained on this year")
    ax.scatter([], [], s=45, marker="*", color="black", label="challenger promoted")
    ax.set_xticks(years)
    ax.set_xlabel("year (scored before its labels are seen)")
    ax.set_ylabel("production RMSE (popularity points)")
    ax.set_title(f"Prequential RMSE per policy: {data_label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- entry point -----------------------------------------------------------------------------------
def base_settings(args: argparse.Namespace, state_root: Path) -> tuple[Settings, list[int], str]:
    """Settings shared by all policies, the periods in the data, and a label for the data."""
    settings = Settings(state_dir=state_root)
    data = args.data
    if data is None and not args.synthetic and SEED_CSV.exists():
        data = SEED_CSV
    if data is None:
        settings = dataclasses.replace(settings, source="synthetic")
        first = args.first_year or 2008
        return settings, list(range(first, args.last_year + 1)), "synthetic source"
    data = Path(data).resolve()
    settings = dataclasses.replace(settings, source="file").with_file_source(landing_dir=data.parent, pattern=data.name)
    if args.column_map:
        settings = settings.with_file_source(**load_column_map(Path(args.column_map)))
    periods = file_source.available_periods(settings.file_source, settings.dataset, data.parent)
    first = args.first_year or periods[0]
    return settings, [p for p in periods if first <= p <= args.last_year], data.name


def data_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say which data, which years and where the output goes (shared with ceiling.py)."""
    parser.add_argument("--data", type=Path, help="CSV of tracks (default: the seed CSV if present, else synthetic)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--warmup-end", type=int, default=2014, help="the first model is trained at this year")
    parser.add_argument("--last-year", type=int, default=2019)
    parser.add_argument("--first-year", type=int, default=None, help="default: the data's first year")
    parser.add_argument(
        "--column-map", type=Path, help="JSON column map for the file source (see config.load_column_map)"
    )
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic source even if the seed CSV exists")
    parser.add_argument("--state", type=Path, help="where the state goes (default: OUT/state)")


def settings_from(args: argparse.Namespace) -> tuple[Settings, list[int], list[int], str]:
    """(settings with the warm-up years, the data's years, the scored years, a label for the data),
    after quieting the libraries' logs and making the output directory."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # MLflow's advice on integer columns and input examples repeats for every logged model.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")
    # MLflow draws a progress bar for every model it downloads; the per-year lines are the progress.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    base, years, data_label = base_settings(args, (args.state or out / "state").resolve())
    base = dataclasses.replace(
        base, training=dataclasses.replace(base.training, warmup_start=years[0], warmup_end=args.warmup_end)
    )
    eval_years = [y for y in years if y > args.warmup_end]
    print(
        f"data: {data_label}; years {years[0]}-{years[-1]}, warm-up until {args.warmup_end}; scoring {eval_years}",
        flush=True,
    )
    return base, years, eval_years, data_label


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data_arguments(parser)
    parser.add_argument("--policies", nargs="*", default=[p.name for p in POLICIES], choices=[p.name for p in POLICIES])
    args = parser.parse_args(argv)
    base, years, eval_years, data_label = settings_from(args)
    out = args.out.resolve()

    results: list[PolicyResult] = []
    curated_from: Settings | None = None
    for policy in POLICIES:
        if policy.name not in args.policies or policy.configure is None:
            continue
        results.append(run_policy(policy, base, years))
        curated_from = curated_from or dataclasses.replace(base, state_dir=base.state_dir / policy.name)
    if curated_from is None:  # only previous_mean asked for: validate the data once
        curated_from = dataclasses.replace(base, state_dir=base.state_dir / "data")
        curate(curated_from, years)
    baseline = next(p for p in POLICIES if p.name == "previous_mean")
    if baseline.name in args.policies:
        results.insert(min(3, len(results)), previous_mean(curated_from, baseline, eval_years))
    order = [p.name for p in POLICIES]
    results.sort(key=lambda r: order.index(r.policy.name))

    summary = summarize(results, eval_years, within_year_std(curated_from, eval_years))
    command = "python benchmarks/prequential.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2))
    write_markdown(summary, out / "benchmark.md", command, data_label)
    write_plot(summary, out / "benchmark.png", data_label)
    print((out / "benchmark.md").read_text())
    print(f"wrote {out / 'benchmark.json'}, {out / 'benchmark.md'}, {out / 'benchmark.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
