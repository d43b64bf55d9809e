"""``python -m driftwheel``: run the flywheel locally through the real Airflow scheduler.

* ``demo``: start the embedded stack (PostgreSQL in the state directory, Airflow api-server,
  scheduler and dag-processor), backfill the yearly DAG over 2008–2020 (``--start``/``--end``; with
  the file source, the years its files hold), print the per-year table.
* ``ui``: serve the Airflow UI and the MLflow UI on the same state until interrupted.
* ``table``: print the per-year table of what has run so far, with a legend of its columns.
* ``report``: write the timeline (``<state>/reports/timeline.html`` and ``.png``) from the MLflow runs.
* ``replay``: run the same steps over a range of years in this process, without Airflow, and print
  the same table (:mod:`driftwheel_ops.replay_command`).
* ``lab``: every retrain policy on every drift scenario, in this process and its workers, no
  Airflow; a matrix as JSON, Markdown and plots (:mod:`driftwheel_ops.lab_command`).

Both UIs log in as ``admin`` with passwords generated once and stored (mode 0600) in the state
directory; they are printed. ``demo`` continues an unfinished backfill (a crash, a failed year):
finished years are kept, the failed or interrupted ones run again. A failed year, or a process of
the stack that dies, ends the command at once with a non-zero exit and says what to look at.

External databases are a setting away: ``FLYWHEEL_AIRFLOW_DB_URI`` and ``FLYWHEEL_MLFLOW_DB_URI``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from driftwheel.config import REPO_ROOT, DataError, Schedule, Settings
from driftwheel.sources.file import LandingError
from driftwheel_ops import champion_commands, lab_command, replay_command
from driftwheel_ops.local_stack import (
    LocalStack,
    MlflowAuthUnavailable,
    ProcessDied,
    RunState,
    StackConfig,
    StackError,
)

if TYPE_CHECKING:
    from driftwheel.report import PeriodRow

logger = logging.getLogger("driftwheel")

DAG_ID = "spotify_flywheel"
DEFAULT_API_PORT = 8080
DEFAULT_MLFLOW_PORT = 5000


def _stack_config(
    settings: Settings, api_port: int, last_year: int | None = None, overrides: Mapping[str, str] | None = None
) -> StackConfig:
    passthrough = {k: v for k, v in os.environ.items() if k.startswith("FLYWHEEL_") and not k.endswith("_DB_URI")}
    if last_year is not None:
        passthrough["FLYWHEEL_LAST_YEAR"] = str(last_year)
    passthrough.update(overrides or {})
    return StackConfig(
        state_dir=settings.state_dir,
        dags_folder=REPO_ROOT / "dags",
        # The project's plugin (the Flywheel menu, the timeline page) in `make ui` and `make demo` too.
        plugins_folder=REPO_ROOT / "plugins",
        python_path=(REPO_ROOT / "include",),
        airflow_db_uri=os.environ.get("FLYWHEEL_AIRFLOW_DB_URI") or None,
        mlflow_db_uri=os.environ.get("FLYWHEEL_MLFLOW_DB_URI") or None,
        api_port=api_port,
        extra_env={**passthrough, "FLYWHEEL_STATE_DIR": str(settings.state_dir)},
    )


def _period_rows(settings: Settings, tracking_uri: str) -> list[PeriodRow] | None:
    """The per-year rows recorded in MLflow; None when no period has run yet."""
    from driftwheel import registry, report

    client = registry.connect(tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment_name)
    if experiment is None:
        return None
    return report.period_table(client, experiment.experiment_id)


def _print_table(settings: Settings, tracking_uri: str) -> None:
    from driftwheel import report

    rows = _period_rows(settings, tracking_uri)
    if rows is None:
        print("no periods have run yet")
        return
    print(report.format_table(rows))
    print()
    print(report.format_legend())


def _rerun_command(args: argparse.Namespace) -> str:
    """The command line that was typed (``make demo`` when it is the default one)."""
    if args.argv in ([], ["demo"]):
        return "make demo"
    return "python -m driftwheel " + shlex.join(args.argv)


def _print_login(stack: LocalStack) -> None:
    user, password = stack.admin_credentials()
    print(f"log in as {user} / {password}  (stored in {stack.passwords_file})", flush=True)


def _print_failure(stack: LocalStack, run: RunState, later: list[RunState], rerun: str) -> None:
    year = run.logical_date.year if run.logical_date else run.run_id
    failures = stack.failed_tasks(DAG_ID, run.run_id)
    print()
    if not failures:
        print(f"year {year} failed (run {run.run_id}) without a failed task; see {stack.logs_dir}/scheduler.log")
    for failure in failures:
        print(f"year {year} failed in task {failure.task_id} (attempt {failure.try_number}):")
        print(f"  error: {failure.error or 'no error line found in the log'}")
        print(f"  log:   {failure.log_path or 'no log file found'}")
    if later:
        years = ", ".join(str(r.logical_date.year) if r.logical_date else r.run_id for r in later)
        print(f"not run: {years} (each year starts from the model the year before left)")
    print(f"fix the cause, then rerun: {rerun}  (finished years are kept; {year} and the later years run again)")


@dataclass(frozen=True)
class DemoYears:
    """The years a demo backfills, and the settings its tasks get for them (``FLYWHEEL_*`` variables)."""

    years: list[int]
    overrides: dict[str, str]
    notes: list[str]


def demo_years(settings: Settings, schedule: Schedule, start: int | None, end: int | None) -> DemoYears:
    """``start``..``end``, a bound not given being the file source's first or last year (else 2008, 2020).

    The DAG's first year moves back to the first year run when that is earlier, and the warm-up to the
    data's first years when the configured ones are not in the data (:func:`replay_command.default_warmup`,
    said in ``notes``). Raises what :func:`replay_command.data_years` raises for unreadable files, and
    :class:`LandingError` when the file source has no rows at all.
    """
    available = replay_command.data_years(settings)
    if settings.source == "file" and not available:
        # Every year would fail in its first task, after Airflow took its time to start.
        raise LandingError(
            f"no landing file in {settings.landing_dir} matching {settings.file_source.pattern!r} has rows with a "
            f"{settings.dataset.period_column}; put CSV or Parquet files there (FLYWHEEL_LANDING_DIR chooses the folder)"
        )
    years = replay_command.years_to_run(start, end, available)
    overrides: dict[str, str] = {}
    notes: list[str] = []
    if years and years[0] < schedule.first_year:
        overrides["FLYWHEEL_FIRST_YEAR"] = str(years[0])
    warmup = replay_command.default_warmup(available, settings.training)
    if warmup is not None:
        overrides["FLYWHEEL_WARMUP_START"], overrides["FLYWHEEL_WARMUP_END"] = map(str, warmup)
        notes.append(replay_command.warmup_note(settings.training, available, warmup))
    return DemoYears(years, overrides, notes)


def demo(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    started = time.perf_counter()
    rerun = _rerun_command(args)
    print(f"state directory: {settings.state_dir}  (source: {settings.source})", flush=True)
    try:
        plan = demo_years(settings, Schedule.from_env(), args.start, args.end)
    except (DataError, LandingError) as error:  # before anything starts: the message names what to fix
        print(f"error: {error}")
        return 1
    if not plan.years:
        print(f"error: no years to backfill (--start {args.start} is after --end {args.end})")
        return 1
    for note in plan.notes:
        print(note, flush=True)
    first, last = plan.years[0], plan.years[-1]
    config = _stack_config(settings, args.api_port, last_year=last, overrides=plan.overrides)
    with LocalStack(config) as stack:
        try:
            up = time.perf_counter() - started
            print(f"Airflow is up at {stack.api_url} ({up:.0f} s); parsing the DAG...", flush=True)
            _print_login(stack)
            stack.wait_for_dag(DAG_ID)
            recovered = stack.recover_backfills(DAG_ID)
            if recovered:
                print(f"an earlier backfill did not finish (a crash or a failed year): {len(recovered)} unfinished "
                      "runs were stopped; they run again now", flush=True)  # fmt: skip
            backfill_started = time.perf_counter()
            finished: list[RunState] = []

            def progress(run: RunState) -> None:
                finished.append(run)
                year = run.logical_date.year if run.logical_date else "?"
                took = float("nan")
                if run.start_date and run.end_date:
                    took = (run.end_date - run.start_date).total_seconds()
                print(f"  {year}: {run.state} in {took:.0f} s", flush=True)

            print(f"backfilling {DAG_ID} over {first}-{last} through the scheduler "
                  "(one run per year, in order)...", flush=True)  # fmt: skip
            runs = stack.backfill(
                DAG_ID, date(first, 1, 1), date(last, 1, 1), timeout=args.timeout,
                on_run_finished=progress, stop_on_failure=True,
            )  # fmt: skip
            backfill_seconds = time.perf_counter() - backfill_started
            failed = [r for r in finished if r.state != "success"]
            if failed:
                done = {r.run_id for r in finished}
                _print_failure(stack, failed[0], [r for r in runs if r.run_id not in done], rerun)
                return 1
            print()
            _print_table(settings, stack.mlflow_db_uri)
            durations = stack.task_durations(DAG_ID, [r.run_id for r in runs])
        except ProcessDied as e:
            print(f"\n{e}", flush=True)
            print(f"stopping the rest of the stack; then `{rerun}` continues where this run stopped", flush=True)
            return 1
    print()
    total = time.perf_counter() - started
    print(f"{len(runs)} of {len(runs)} runs succeeded; backfill {backfill_seconds:.0f} s, total {total:.0f} s")
    if durations:
        in_tasks = sum(d for _, _, d in durations)
        print(
            f"{len(durations)} task instances: {in_tasks:.0f} s inside tasks, "
            f"{(backfill_seconds - in_tasks) / len(durations):.1f} s of scheduling per task on top"
        )
    print(
        f"drift reports: {settings.reports_dir}/year=<YYYY>/drift_<YYYY>_vs_<reference>.html (also attached to each MLflow run)"
    )
    print("the timeline: python -m driftwheel report  (or the Flywheel menu of the Airflow UI)")
    if args.api_port == DEFAULT_API_PORT:
        print(f"look around: make ui  (Airflow on :{DEFAULT_API_PORT}, MLflow on :{DEFAULT_MLFLOW_PORT})")
    else:
        # The port this demo used, not the default: `ui` serves Airflow where it is asked to.
        print(f"look around: python -m driftwheel --api-port {args.api_port} ui  "
              f"(Airflow on :{args.api_port}, MLflow on :{DEFAULT_MLFLOW_PORT}; --mlflow-port moves it)")  # fmt: skip
    if not runs:
        print("every year in the range had already run; `make clean` forgets them")
    return 0


def ui(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    # The plugin's MLflow links point where this command serves MLflow, not at the default port.
    mlflow_ui = {"FLYWHEEL_MLFLOW_UI_URL": f"http://127.0.0.1:{args.mlflow_port}"}
    with LocalStack(_stack_config(settings, args.api_port, last_year=args.end, overrides=mlflow_ui)) as stack:
        try:
            # Left paused as the demo left it: looking around must not start new runs.
            stack.wait_for_dag(DAG_ID, unpause=False)
            mlflow_login: tuple[str, str] | None = None
            mlflow_refused = ""
            try:
                mlflow_login = stack.serve_mlflow(args.mlflow_port, settings.artifact_location)
            except MlflowAuthUnavailable as e:
                # Never served without a login; Airflow's UI alone is still worth having.
                mlflow_refused = str(e)
            print(f"Airflow UI: {stack.api_url}   (DAG: {stack.api_url}/dags/{DAG_ID})")
            print(f"Timeline:   {stack.api_url}/flywheel/timeline   (also in the Flywheel menu and on each year's run)")
            _print_login(stack)
            if mlflow_login is not None:
                user, password = mlflow_login
                print(f"MLflow UI:  http://127.0.0.1:{args.mlflow_port}   "
                      f"(model: {settings.model_name}, aliases champion/challenger)")  # fmt: skip
                print(f"log in as {user} / {password}  (stored in {stack.mlflow_auth_config})")
            else:
                print(f"MLflow UI:  not started: {mlflow_refused}")
            print("Ctrl-C stops both.", flush=True)
            while True:
                stack.check_processes()
                time.sleep(1)
        except KeyboardInterrupt:
            return 0
        except ProcessDied as e:
            print(f"\n{e}", flush=True)
            print("stopping the rest of the stack", flush=True)
            return 1


def _with_tracking_uri(settings: Settings, api_port: int, use: Callable[[str], int]) -> int:
    """``use(tracking_uri)``: FLYWHEEL_MLFLOW_TRACKING_URI if set, else the embedded stack's database."""
    uri = os.environ.get("FLYWHEEL_MLFLOW_TRACKING_URI")
    if uri:
        return use(uri)
    with LocalStack(_stack_config(settings, api_port)) as stack:
        return use(stack.mlflow_db_uri)


def table(args: argparse.Namespace) -> int:
    settings = Settings.from_env()

    def show(uri: str) -> int:
        _print_table(settings, uri)
        return 0

    return _with_tracking_uri(settings, args.api_port, show)


def timeline(args: argparse.Namespace) -> int:
    from driftwheel import report

    settings = Settings.from_env()

    def write(uri: str) -> int:
        rows = _period_rows(settings, uri)
        if not rows:
            print(f"no periods have run yet in experiment {settings.experiment_name!r}: run `make demo` first")
            return 1
        html_path, png_path = report.write_timeline(rows, settings.reports_dir, Schedule.from_env().display_name)
        print(f"timeline of {len(rows)} periods ({rows[0].year}-{rows[-1].year}):")
        print(f"  {html_path}")
        print(f"  {png_path}")
        return 0

    return _with_tracking_uri(settings, args.api_port, write)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m driftwheel", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--api-port", type=int, default=int(os.environ.get("FLYWHEEL_API_PORT", str(DEFAULT_API_PORT))))
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the stack does")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="backfill the DAG over a range of years and print the table")
    run_demo.add_argument(
        "--start", type=int, help="first year (make demo START=...; default: 2008, or the file source's first year)"
    )
    run_demo.add_argument(
        "--end", type=int, help="last year (make demo END=...; default: 2020, or the file source's last year)"
    )
    run_demo.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the backfill")
    run_demo.set_defaults(func=demo)
    run_ui = commands.add_parser("ui", help="serve the Airflow and MLflow UIs on the demo's state")
    run_ui.add_argument("--mlflow-port", type=int, default=DEFAULT_MLFLOW_PORT)
    run_ui.add_argument("--end", type=int, default=2020, help="last year the DAG schedules (as in the demo)")
    run_ui.set_defaults(func=ui)
    commands.add_parser("table", help="print the per-year table").set_defaults(func=table)
    commands.add_parser(
        "report", help="write the timeline (state/reports/timeline.html and .png) from the MLflow runs"
    ).set_defaults(func=timeline)
    replay_command.add_command(commands)
    lab_command.add_command(commands)
    champion_commands.add_commands(commands)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )
    # SIGTERM (timeout, systemd, a closed terminal) unwinds like Ctrl-C: the stack's context
    # manager then stops every process it started instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        return int(args.func(args))
    except StackError as e:  # the stack has been stopped by now; its message says what to look at
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
