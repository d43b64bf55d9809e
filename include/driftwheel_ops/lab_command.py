"""``python -m driftwheel lab``: every retrain policy on every drift scenario, one matrix.

Each cell (a policy on a scenario) runs in a worker process (``--jobs``, default: the machine's
cores) and replays the flywheel's steps over the scenario's years (:func:`driftwheel.lab.run_cell`)
from an empty state. The cells share a folder of drift reports: every policy of a scenario sees
the same data, so each drift report is computed once and reused (the same file, the same numbers).
A cell's numbers do not depend on ``--jobs``: every worker trains on one thread, from fixed seeds.
Writes ``OUT/lab.json``, ``OUT/lab.md`` and ``OUT/<scenario>.png`` (production RMSE per year and
policy, the change marked). The cells' state (data, SQLite MLflow stores) goes to ``--state-dir``
(default ``<state>/lab``), never next to the output: ``make lab`` writes into the docs.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shlex
import shutil
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from driftwheel import lab, store
from driftwheel.config import REPO_ROOT, Settings
from driftwheel.policies import LAB_POLICIES, POLICIES
from driftwheel.scenarios import PRESETS, ScenarioError, load_scenario

RETRAIN_POLICIES = [name for name, p in POLICIES.items() if p.configure is not None]


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    command = commands.add_parser(
        "lab", help="replay every retrain policy on every drift scenario and write the matrix (JSON, Markdown, plots)"
    )
    command.add_argument(
        "--scenarios",
        nargs="+",
        default=list(PRESETS),
        metavar="SCENARIO",
        help="presets or scenario JSON files (default: all %(default)s presets)".replace(
            "%(default)s", str(len(PRESETS))
        ),
    )
    command.add_argument(
        "--policies",
        nargs="+",
        default=list(LAB_POLICIES),
        choices=RETRAIN_POLICIES,
        metavar="POLICY",
        help=f"retrain policies, of {', '.join(RETRAIN_POLICIES)} (default: {' '.join(LAB_POLICIES)})",
    )
    command.add_argument("--out", type=Path, required=True, help="where lab.json, lab.md and the plots go")
    command.add_argument(
        "--state-dir", type=Path, help="where the cells keep their data and MLflow stores (default: <state>/lab)"
    )
    command.add_argument("--rows", type=int, default=500, help="synthetic tracks per year (default %(default)s)")
    command.add_argument("--first-year", type=int, default=lab.LabYears.first, help="first year (default %(default)s)")
    command.add_argument(
        "--warmup-end", type=int, default=lab.LabYears.warmup_end, help="last warm-up year (default %(default)s)"
    )
    command.add_argument("--last-year", type=int, default=lab.LabYears.last, help="last year (default %(default)s)")
    command.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="cells run at once (default: the cores, %(default)s)"
    )
    command.set_defaults(func=run_lab)


def _quiet() -> None:
    """Each worker's setup: the progress lines are the output, not MLflow's advice and bars."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _worker() -> None:
    """A worker's setup: quiet, and torch on one thread. The workers already fill the cores, and a
    sum over one thread adds in one order: a cell trains the same model whatever ``--jobs`` is."""
    import torch

    _quiet()
    torch.set_num_threads(1)


def run_one(
    scenario: str, policy: str, years: lab.LabYears, rows: int, state_root: Path, empty_db: Path, cache: Path
) -> lab.CellResult:
    """One policy on one scenario (a worker's job); prints its line of the matrix."""
    base = lab.base_settings(state_root, rows)
    cell = lab.run_cell(base, scenario, policy, years, state_root, empty_mlflow_db=empty_db, report_cache=cache)
    summary = lab.summarize_cell(cell, years)
    delay = summary["detection_delay"]
    print(
        f"  {scenario:<22} {policy:<16} mean RMSE {lab._fmt(summary['mean_production_rmse']):>6}  "
        f"retrains {summary['retrains']}  promoted {summary['promotions']}  rejected {summary['rejected']}  "
        f"delay {'-' if delay is None else delay}  ({cell.seconds:.0f} s, {cell.cpu_seconds:.0f} s CPU)",
        flush=True,
    )
    return cell


def write_plot(name: str, entry: dict[str, Any], summary: dict[str, Any], path: Path) -> None:
    """Production RMSE per scored year and policy; the years the scenario's change is on are shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    years = summary["years"]["scored"]
    scenario = load_scenario(name)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    active = [y for y in years if any(s.intensity(y) > 0 for s in scenario.shifts)]
    for year in active:
        ax.axvspan(year - 0.5, year + 0.5, color="tab:red", alpha=0.07, linewidth=0)
    for year in (y for y in scenario.change_years if years[0] <= y <= years[-1]):
        ax.axvline(year, color="tab:red", linestyle="--", linewidth=1)
    for policy, s in entry["policies"].items():
        points = [(y, s["per_period"].get(str(y))) for y in years]
        points = [(y, v) for y, v in points if v is not None]
        if not points:
            continue
        (line,) = ax.plot(
            *zip(*points),
            marker="o",
            markersize=3.5,
            linewidth=2.2 if policy == "default" else 1.2,
            label=f"{policy} ({lab._fmt(s['mean_production_rmse'])})",
        )
        # A retrain on year Y changes the model that scores Y+1: circle Y's point.
        retrained = [(y, v) for y, v in points if y in s["retrained"]]
        if retrained:
            xs, ys = zip(*retrained)
            ax.scatter(xs, ys, s=70, facecolors="none", edgecolors=line.get_color(), linewidths=1.2)
    ax.plot([], [], color="tab:red", linestyle="--", label="change")
    ax.scatter([], [], s=70, facecolors="none", edgecolors="black", label="retrained on this year")
    ax.set_xticks(years)
    ax.set_xlabel("year (scored before its labels are seen)")
    ax.set_ylabel("production RMSE")
    ax.set_title(f"{name}: {scenario.description}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_lab(args: argparse.Namespace) -> int:
    try:
        years = lab.LabYears(args.first_year, args.warmup_end, args.last_year)
        for scenario in args.scenarios:
            load_scenario(scenario)
    except (ValueError, ScenarioError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    state_root = (args.state_dir or Settings.from_env().state_dir / "lab").resolve()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    order = [(scenario, policy) for scenario in args.scenarios for policy in args.policies]
    jobs = max(1, min(args.jobs, len(order)))
    print(
        f"drift lab: {len(args.scenarios)} scenarios x {len(args.policies)} policies, {args.rows} tracks a year, "
        f"{years.first}-{years.last} (warm-up to {years.warmup_end}); {jobs} worker(s); state in {state_root}",
        flush=True,
    )
    started = time.perf_counter()
    _quiet()
    empty_db = lab.make_empty_mlflow_db(state_root / "empty-mlflow.db")
    # Emptied first: a report of an earlier run (other code, another Evidently) is never reused.
    cache = state_root / "drift-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cells: dict[tuple[str, str], lab.CellResult] = {}
    left = {scenario: len(args.policies) for scenario in args.scenarios}
    # spawn, not fork: a forked torch or MLflow (threads, open SQLite handles) can hang a child.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker) as pool:
        # Submitted scenario by scenario: a scenario's cells run close together and finish it early.
        futures = {
            pool.submit(run_one, scenario, policy, years, args.rows, state_root, empty_db, cache): (scenario, policy)
            for scenario, policy in order
        }
        done = 0
        for future in as_completed(futures):
            scenario, policy = futures[future]
            cells[scenario, policy] = future.result()  # a failed cell ends the lab with its traceback
            left[scenario] -= 1
            if left[scenario]:
                continue
            done += 1
            elapsed = time.perf_counter() - started
            # Written after every scenario: a long matrix shows (and keeps) what is done so far. In
            # the order asked for, not the order finished: the files do not depend on --jobs.
            finished = [cells[key] for key in order if key in cells and not left[key[0]]]
            summary = write_outputs(finished, years, args, out, elapsed, jobs)
            print(f"[{done}/{len(left)}] {scenario} done ({elapsed:.0f} s elapsed)", flush=True)

    print(
        f"\n{len(cells)} cells in {summary['seconds']:.0f} s with {jobs} worker(s), {summary['cpu_seconds']:.0f} s CPU"
    )
    print(f"wrote {out / 'lab.json'}, {out / 'lab.md'} and {len(summary['scenarios'])} plots")
    return 0


def write_outputs(
    cells: list[lab.CellResult], years: lab.LabYears, args: argparse.Namespace, out: Path, elapsed: float, jobs: int
) -> dict[str, Any]:
    """lab.json, lab.md and a plot per scenario of the cells finished so far; returns the summary."""
    summary = lab.summarize(cells, years, args.rows)
    summary["seconds"] = round(elapsed, 1)
    summary["cpu_seconds"] = round(sum(c.cpu_seconds for c in cells), 1)
    summary["jobs"] = jobs
    command = "python -m driftwheel " + shlex.join(_shown_argv(args.argv))
    store.write_text(out / "lab.json", json.dumps(summary, indent=2) + "\n")
    store.write_text(out / "lab.md", lab.matrix_markdown(summary, command))
    for name, entry in summary["scenarios"].items():
        write_plot(name, entry, summary, out / entry["plot"])
    return summary


def _shown_argv(argv: list[str]) -> list[str]:
    """The command as typed, with paths inside the repository shown relative to it."""
    shown = []
    for arg in argv:
        path = Path(arg)
        if path.is_absolute() and path.resolve().is_relative_to(REPO_ROOT):
            arg = str(path.resolve().relative_to(REPO_ROOT))
        shown.append(arg)
    return shown
