"""Orchestration benchmark: the demo's backfill against Airflow's floor for the same graph.

    python benchmarks/orchestration.py --out DIR [--start 2008] [--end 2020] [--state-dir PATH]

(with the venv's python, which finds the library through its .pth file.)

In one run, on the stack ``make demo`` uses (:class:`driftwheel_ops.local_stack.LocalStack`:
LocalExecutor on the embedded PostgreSQL, with the demo's settings), it backfills

1. ``spotify_flywheel`` over the demo's years (2008-2020, synthetic source) from a fresh state
   directory, exactly as ``make demo`` does, then
2. ``flywheel_twin`` (benchmarks/dags/flywheel_twin.py): the same task ids, edges and trigger rules,
   tasks that return at once, each branch taking the branch the real DAG took for the same year, so
   both backfills run and skip the same task instances. The benchmark checks both through the REST API.

For each it reports the backfill's wall time (from creating the backfill to its last run finished),
the seconds inside tasks (the sum of the executed task instances' durations as the REST API reports
them), the seconds between tasks (wall time minus time in tasks) and the ratio of the two wall times
(goal: at most 1.3). Writes DIR/orchestration.json and DIR/orchestration.md. The state directory
(default: state/bench-orchestration) is wiped first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections import defaultdict
from datetime import date, datetime
from pathlib import Path
from typing import Any

from driftwheel.config import Schedule, Settings
from driftwheel_ops.cli import DAG_ID, _stack_config, demo_years
from driftwheel_ops.local_stack import LocalStack, RunState

REPO = Path(__file__).resolve().parents[1]
TWIN_DAG = Path(__file__).resolve().parent / "dags" / "flywheel_twin.py"
TWIN_ID = "flywheel_twin"
BRANCHES = ("decide_retrain", "decide_promotion")
GOAL_RATIO = 1.3
GOAL_SECONDS = 180.0


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def dags_folder(state_dir: Path) -> Path:
    """The repo's DAG files plus the twin, linked into one folder (the demo's files unchanged)."""
    folder = state_dir / "dags"
    folder.mkdir(parents=True, exist_ok=True)
    for source in [*sorted((REPO / "dags").glob("*.py")), TWIN_DAG]:
        (folder / source.name).symlink_to(source)
    return folder


def task_instances(stack: LocalStack, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """The run's task instances as the REST API lists them."""
    path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances?limit=1000"
    return list(stack.api("GET", path)["task_instances"])


def graph(stack: LocalStack, dag_id: str) -> dict[str, tuple[list[str], str]]:
    """task_id -> (sorted downstream task ids, trigger rule), from the REST API."""
    tasks = stack.api("GET", f"/api/v2/dags/{dag_id}/tasks")["tasks"]
    return {t["task_id"]: (sorted(t["downstream_task_ids"]), t["trigger_rule"]) for t in tasks}


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def measure(stack: LocalStack, dag_id: str, start: int, end: int, timeout: float) -> dict[str, Any]:
    """Backfill ``dag_id`` over ``start``..``end`` and return its timings (and its task instances)."""
    print(f"backfilling {dag_id} over {start}-{end} (load average {load_average()})...", flush=True)
    began = time.perf_counter()

    def progress(run: RunState) -> None:
        took = (run.end_date - run.start_date).total_seconds() if run.start_date and run.end_date else float("nan")
        year = run.logical_date.year if run.logical_date else run.run_id
        print(
            f"  {dag_id} {year}: {run.state} in {took:.1f} s  ({time.perf_counter() - began:.0f} s so far)", flush=True
        )

    runs = stack.backfill(dag_id, date(start, 1, 1), date(end, 1, 1), timeout=timeout, on_run_finished=progress)
    wall = time.perf_counter() - began
    if not runs or any(r.state != "success" for r in runs):
        raise SystemExit(f"{dag_id}: the backfill did not succeed: {[(r.run_id, r.state) for r in runs]}")
    instances: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        assert run.logical_date is not None
        instances[run.logical_date.year] = task_instances(stack, dag_id, run.run_id)
    flat = [ti for tis in instances.values() for ti in tis]
    executed = [ti for ti in flat if ti["state"] in ("success", "failed") and ti["start_date"] and ti["end_date"]]
    durations = [(_when(ti["end_date"]) - _when(ti["start_date"])).total_seconds() for ti in executed]  # type: ignore[operator]
    per_task: dict[str, list[float]] = defaultdict(list)
    for ti, seconds in zip(executed, durations, strict=True):
        per_task[ti["task_id"]].append(seconds)
    starts = [_when(ti["start_date"]) for ti in executed]
    ends = [_when(ti["end_date"]) for ti in executed]
    in_tasks = sum(durations)
    result = {
        "dag_id": dag_id,
        "runs": len(runs),
        "task_instances": len(flat),
        "executed": len(executed),
        "skipped": sum(ti["state"] == "skipped" for ti in flat),
        "tries": sum(int(ti.get("try_number") or 0) for ti in executed),
        "wall_seconds": round(wall, 1),
        "first_start_to_last_end_seconds": round((max(ends) - min(starts)).total_seconds(), 1),  # type: ignore[operator, type-var]
        "in_task_seconds": round(in_tasks, 1),
        "between_task_seconds": round(wall - in_tasks, 1),
        "wall_seconds_per_executed_task": round(wall / len(executed), 2),
        "mean_task_seconds": {t: round(sum(s) / len(s), 2) for t, s in sorted(per_task.items())},
        "states": {year: {ti["task_id"]: ti["state"] for ti in tis} for year, tis in instances.items()},
    }
    print(
        f"{dag_id}: {result['task_instances']} task instances ({result['executed']} executed) in {wall:.0f} s: "
        f"{in_tasks:.0f} s inside tasks, {wall - in_tasks:.0f} s between them",
        flush=True,
    )
    return result


def branches_taken(states: dict[int, dict[str, str]]) -> dict[str, dict[str, str]]:
    """year -> {branch task: the downstream task it chose}, read from the real DAG's task states."""
    chosen = {
        "decide_retrain": ("retrain_model", "skip_retrain"),
        "decide_promotion": ("promote_champion", "reject_challenger"),
    }
    taken: dict[str, dict[str, str]] = {}
    for year, tasks in states.items():
        taken[str(year)] = {
            branch: next((t for t in options if tasks.get(t) == "success"), options[0])
            for branch, options in chosen.items()
        }
    return taken


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    demo, twin = result["demo"], result["twin"]
    rows = [
        ("task instances (executed)", lambda r: f"{r['task_instances']} ({r['executed']})"),
        ("backfill wall time", lambda r: f"{r['wall_seconds']:.0f} s"),
        ("seconds inside tasks", lambda r: f"{r['in_task_seconds']:.0f} s"),
        ("seconds between tasks", lambda r: f"{r['between_task_seconds']:.0f} s"),
        ("wall seconds per executed task", lambda r: f"{r['wall_seconds_per_executed_task']:.2f} s"),
    ]
    lines = [
        "# Orchestration benchmark",
        "",
        f"`python benchmarks/orchestration.py --out {result['out']}` on {result['machine']['cpus']} cores, "
        f"{result['started_at']} (commit {result['commit']}); load average at start "
        f"{result['machine']['load_start']}, at end {result['machine']['load_end']}.",
        "",
        f"| | `{DAG_ID}` (the demo) | `{TWIN_ID}` (same graph, empty tasks) |",
        "|---|---:|---:|",
        *(f"| {name} | {fmt(demo)} | {fmt(twin)} |" for name, fmt in rows),
        "",
        f"**Ratio demo/twin (wall time): {result['ratio']:.2f}** (goal <= {GOAL_RATIO}); "
        f"demo backfill {demo['wall_seconds']:.0f} s (goal <= {GOAL_SECONDS:.0f} s). "
        f"Same graph: {result['same_graph']}; same task states per year: {result['same_states']}.",
        "",
        "Mean seconds inside each task of the demo (executed instances only):",
        "",
        "| task | demo | twin |",
        "|---|---:|---:|",
        *(
            f"| {task} | {seconds:.2f} | {twin['mean_task_seconds'].get(task, float('nan')):.2f} |"
            for task, seconds in demo["mean_task_seconds"].items()
        ),
        "",
        f"Stack settings: {json.dumps(result['stack_settings'])}",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--start", type=int, default=2008)
    parser.add_argument("--end", type=int, default=2020)
    parser.add_argument("--state-dir", type=Path, default=REPO / "state" / "bench-orchestration")
    parser.add_argument("--api-port", type=int, default=8090)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for each backfill")
    args = parser.parse_args(argv)

    started_at = datetime.now().astimezone().isoformat(timespec="seconds")
    load_start = load_average()
    state_dir = args.state_dir.resolve()
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    branches_file = state_dir / "twin_branches.json"

    settings = Settings.from_env({**os.environ, "FLYWHEEL_STATE_DIR": str(state_dir)})
    plan = demo_years(settings, Schedule.from_env(), args.start, args.end)
    config = _stack_config(settings, args.api_port, last_year=plan.years[-1], overrides=plan.overrides)
    config = dataclasses.replace(
        config,
        dags_folder=dags_folder(state_dir),
        extra_env={**config.extra_env, "FLYWHEEL_TWIN_BRANCHES": str(branches_file)},
    )
    first, last = plan.years[0], plan.years[-1]
    print(f"state directory {state_dir}; starting the stack...", flush=True)
    t0 = time.perf_counter()
    with LocalStack(config) as stack:
        print(f"stack up in {time.perf_counter() - t0:.0f} s; parsing the DAGs...", flush=True)
        stack.wait_for_dag(DAG_ID)
        stack.wait_for_dag(TWIN_ID, unpause=False)  # unpaused once the demo is done: never both at once
        same_graph = graph(stack, DAG_ID) == graph(stack, TWIN_ID)
        if not same_graph:
            raise SystemExit(f"{TWIN_ID} does not have the graph of {DAG_ID}: fix benchmarks/dags/flywheel_twin.py")
        stack_settings = {k: v for k, v in sorted(stack.env.items()) if k.startswith(("AIRFLOW__SCHEDULER", "AIRFLOW__DAG_PROC", "AIRFLOW__CORE__PARALLELISM", "DRIFTWHEEL_PRELOAD", "AIRFLOW__API__WORKERS"))}  # fmt: skip

        demo = measure(stack, DAG_ID, first, last, args.timeout)
        branches_file.write_text(json.dumps(branches_taken(demo["states"])))
        stack.airflow("dags", "unpause", TWIN_ID)
        twin = measure(stack, TWIN_ID, first, last, args.timeout)
    same_states = demo["states"] == twin["states"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    result = {
        "out": str(args.out),
        "started_at": started_at,
        "commit": commit.stdout.strip() or "unknown",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_start": load_start,
            "load_end": load_average(),
        },
        "stack_settings": stack_settings,
        "years": [first, last],
        "same_graph": same_graph,
        "same_states": same_states,
        "ratio": round(demo["wall_seconds"] / twin["wall_seconds"], 2),
        "goal_ratio": GOAL_RATIO,
        "goal_seconds": GOAL_SECONDS,
        "demo": demo,
        "twin": twin,
    }
    (args.out / "orchestration.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    write_markdown(args.out / "orchestration.md", result)
    print(
        f"demo {demo['wall_seconds']:.0f} s ({demo['in_task_seconds']:.0f} s in tasks), twin {twin['wall_seconds']:.0f} s "
        f"({twin['in_task_seconds']:.0f} s in tasks): ratio {result['ratio']:.2f}; wrote {args.out}/orchestration.md",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
