"""``python -m driftwheel``: run the flywheel locally through the real Airflow scheduler.

* ``demo``: start the embedded stack (PostgreSQL in the state directory, Airflow api-server,
  scheduler and dag-processor), backfill the yearly DAG over 2008–2020, print the per-year table.
* ``ui``: serve the Airflow UI and the MLflow UI on the same state until interrupted.
* ``table``: print the per-year table of what has run so far.

External databases are a setting away: ``FLYWHEEL_AIRFLOW_DB_URI`` and ``FLYWHEEL_MLFLOW_DB_URI``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import date

from driftwheel.config import REPO_ROOT, Settings
from driftwheel_ops import champion_commands
from driftwheel_ops.local_stack import LocalStack, RunState, StackConfig

logger = logging.getLogger("driftwheel")

DAG_ID = "spotify_flywheel"


def _stack_config(settings: Settings, api_port: int, last_year: int | None = None) -> StackConfig:
    passthrough = {k: v for k, v in os.environ.items() if k.startswith("FLYWHEEL_") and not k.endswith("_DB_URI")}
    if last_year is not None:
        passthrough["FLYWHEEL_LAST_YEAR"] = str(last_year)
    return StackConfig(
        state_dir=settings.state_dir,
        dags_folder=REPO_ROOT / "dags",
        python_path=(REPO_ROOT / "include",),
        airflow_db_uri=os.environ.get("FLYWHEEL_AIRFLOW_DB_URI") or None,
        mlflow_db_uri=os.environ.get("FLYWHEEL_MLFLOW_DB_URI") or None,
        api_port=api_port,
        extra_env={**passthrough, "FLYWHEEL_STATE_DIR": str(settings.state_dir)},
    )


def _print_table(settings: Settings, tracking_uri: str) -> None:
    from driftwheel import registry, report

    client = registry.connect(tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment_name)
    if experiment is None:
        print("no periods have run yet")
        return
    print(report.format_table(report.period_table(client, experiment.experiment_id)))


def demo(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    started = time.perf_counter()
    print(f"state directory: {settings.state_dir}  (source: {settings.source})", flush=True)
    with LocalStack(_stack_config(settings, args.api_port, last_year=args.end)) as stack:
        print(f"Airflow is up at {stack.api_url} ({time.perf_counter() - started:.0f} s); parsing the DAG...", flush=True)
        stack.wait_for_dag(DAG_ID)
        backfill_started = time.perf_counter()

        def progress(run: RunState) -> None:
            year = run.logical_date.year if run.logical_date else "?"
            took = (run.end_date - run.start_date).total_seconds() if run.start_date and run.end_date else float("nan")
            print(f"  {year}: {run.state} in {took:.0f} s", flush=True)

        print(f"backfilling {DAG_ID} over {args.start}-{args.end} through the scheduler (one run per year, in order)...", flush=True)
        runs = stack.backfill(
            DAG_ID, date(args.start, 1, 1), date(args.end, 1, 1), timeout=args.timeout, on_run_finished=progress
        )
        backfill_seconds = time.perf_counter() - backfill_started
        print()
        _print_table(settings, stack.mlflow_db_uri)
        durations = stack.task_durations(DAG_ID, [r.run_id for r in runs])
    failed = [r for r in runs if r.state != "success"]
    print()
    print(f"{len(runs) - len(failed)} of {len(runs)} runs succeeded; backfill {backfill_seconds:.0f} s, total {time.perf_counter() - started:.0f} s")
    if durations:
        in_tasks = sum(d for _, _, d in durations)
        print(
            f"{len(durations)} task instances: {in_tasks:.0f} s inside tasks, "
            f"{(backfill_seconds - in_tasks) / len(durations):.1f} s of scheduling per task on top"
        )
    print(f"drift reports: {settings.reports_dir}/year=<YYYY>/drift_report.html (also attached to each MLflow run)")
    print("look around: make ui  (Airflow on :8080, MLflow on :5000)")
    if not runs:
        print("every year in the range had already run; `make clean` forgets them")
    return 1 if failed else 0


def ui(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    with LocalStack(_stack_config(settings, args.api_port, last_year=args.end)) as stack:
        # Left paused as the demo left it: looking around must not start new runs.
        stack.wait_for_dag(DAG_ID, unpause=False)
        mlflow_log = (settings.state_dir / "logs" / "mlflow-ui.log").open("ab")
        mlflow_ui = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", stack.mlflow_db_uri,
                "--default-artifact-root", settings.artifact_location,
                "--host", "127.0.0.1", "--port", str(args.mlflow_port),
            ],
            stdout=mlflow_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        print(f"Airflow UI: {stack.api_url}   (DAG: {stack.api_url}/dags/{DAG_ID})")
        print(f"MLflow UI:  http://127.0.0.1:{args.mlflow_port}   (model: {settings.model_name}, aliases champion/challenger)")
        print("Ctrl-C stops both.", flush=True)
        try:
            while mlflow_ui.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            if mlflow_ui.poll() is None:
                os.killpg(mlflow_ui.pid, signal.SIGTERM)
                mlflow_ui.wait(timeout=30)
    return 0


def table(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    uri = os.environ.get("FLYWHEEL_MLFLOW_TRACKING_URI")
    if uri:
        _print_table(settings, uri)
        return 0
    with LocalStack(_stack_config(settings, args.api_port)) as stack:
        _print_table(settings, stack.mlflow_db_uri)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m driftwheel", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api-port", type=int, default=int(os.environ.get("FLYWHEEL_API_PORT", "8080")))
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the stack does")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="backfill the DAG over a range of years and print the table")
    run_demo.add_argument("--start", type=int, default=2008)
    run_demo.add_argument("--end", type=int, default=2020)
    run_demo.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the backfill")
    run_demo.set_defaults(func=demo)
    run_ui = commands.add_parser("ui", help="serve the Airflow and MLflow UIs on the demo's state")
    run_ui.add_argument("--mlflow-port", type=int, default=5000)
    run_ui.add_argument("--end", type=int, default=2020, help="last year the DAG schedules (as in the demo)")
    run_ui.set_defaults(func=ui)
    commands.add_parser("table", help="print the per-year table").set_defaults(func=table)
    champion_commands.add_commands(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    # SIGTERM (timeout, systemd, a closed terminal) unwinds like Ctrl-C: the stack's context
    # manager then stops every process it started instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
