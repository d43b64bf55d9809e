"""``python -m driftwheel replay``: the flywheel over a range of years in this process, no Airflow.

A quick look at what the flywheel does with one's data: every year runs through the same steps
as the DAG's tasks (:func:`driftwheel.replay.replay`), then the per-year table of ``demo`` is
printed. It keeps its own state directory (default ``<state>/replay/<source>``, with a SQLite MLflow
store inside) so that it never mixes its runs and models with the demo's; it reads the source settings
(``FLYWHEEL_SOURCE``, ``FLYWHEEL_LANDING_DIR``, ``FLYWHEEL_COLUMN_MAP``, ...) from the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
import warnings
from pathlib import Path

from driftwheel import report
from driftwheel.config import DataError, Settings
from driftwheel.replay import PeriodOutcome, replay
from driftwheel.steps import PeriodRefused


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    command = commands.add_parser(
        "replay", help="run the flywheel over a range of years in this process (no Airflow) and print the table"
    )
    command.add_argument("--start", type=int, help="first year (default: 2008, or the file source's first year)")
    command.add_argument("--end", type=int, help="last year (default: 2020, or the file source's last year)")
    command.add_argument(
        "--state-dir",
        type=Path,
        help="where the replay keeps its data, models and MLflow store (default: <state>/replay/<source>)",
    )
    command.set_defaults(func=run_replay)


def replay_settings(env_settings: Settings, state_dir: Path | None) -> Settings:
    """The environment's settings in the replay's own state directory, with its own MLflow store.

    A tracking server or lock configured for the demo or the server stack is not used: a replay
    must not register models next to the production ones.
    """
    # One folder per source: a replay continues in its folder, and a synthetic year must not
    # become the history of a file source's year.
    state = (state_dir or env_settings.state_dir / "replay" / env_settings.source).resolve()
    return dataclasses.replace(env_settings, state_dir=state, mlflow_tracking_uri=None, lock_uri=None)


def _years(settings: Settings, start: int | None, end: int | None) -> list[int]:
    if settings.source == "file" and (start is None or end is None):
        from driftwheel.sources import file as file_source

        available = file_source.available_periods(settings.file_source, settings.dataset, settings.landing_dir)
        if available:
            start = available[0] if start is None else start
            end = available[-1] if end is None else end
    return list(range(2008 if start is None else start, (2020 if end is None else end) + 1))


def _print_progress(outcome: PeriodOutcome) -> None:
    row = outcome.row
    line = f"  {row.year}: {row.rows} rows, {row.decision}"
    if outcome.gate is not None:
        challenger = "-" if outcome.gate["challenger_rmse"] is None else f"{outcome.gate['challenger_rmse']:.2f}"
        outcome_text = "promoted" if outcome.promotion and outcome.promotion["promoted"] else "rejected"
        line += f", challenger RMSE {challenger} {outcome_text}"
    champion = f"v{row.champion_version}" if row.champion_version else "none"
    print(f"{line}; champion {champion}  ({outcome.seconds:.1f} s)", flush=True)


def run_replay(args: argparse.Namespace) -> int:
    # MLflow draws a progress bar for every model it loads; the per-year lines are the progress here.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's advice on integer columns and input examples would repeat for every logged model.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")
    if not args.verbose:  # MLflow logs its database migrations and more at INFO through its own handler
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        settings = replay_settings(Settings.from_env(), args.state_dir)
        years = _years(settings, args.start, args.end)
    except DataError as error:
        print(f"error: {error}")
        return 1
    if not years:
        print(f"error: no years to replay (--start {args.start} is after --end {args.end})")
        return 1
    source = settings.source if settings.source != "file" else f"file, {settings.landing_dir.resolve()}"
    print(f"state directory: {settings.state_dir}  (source: {source}; MLflow: {settings.tracking_uri})", flush=True)
    print(
        f"replaying {years[0]}-{years[-1]} in this process, no Airflow (the DAG's steps, in its order)...", flush=True
    )
    started = time.perf_counter()
    finished: list[report.PeriodRow] = []

    def progress(outcome: PeriodOutcome) -> None:
        finished.append(outcome.row)
        _print_progress(outcome)

    try:
        replay(settings, years, on_period=progress)
    except (DataError, PeriodRefused) as error:
        # Bad data or a year out of order: the message names what to fix; anything else is a bug
        # and keeps its traceback.
        print(f"\nyear {years[len(finished)]} failed: {error}")
        if finished:
            print("\n" + report.format_table(finished))
        later = years[len(finished) + 1 :]
        if later:
            print(f"not run: {', '.join(map(str, later))} (each year starts from the model the year before left)")
        return 1
    print()
    print(report.format_table(finished))
    print()
    print(f"{len(finished)} years in {time.perf_counter() - started:.0f} s")
    print(f"drift reports: {settings.reports_dir}/year=<YYYY>/drift_report.html")
    print(f"MLflow store: {settings.tracking_uri} (experiment {settings.experiment_name}); "
          f"rerunning a year is idempotent, deleting {settings.state_dir} starts over")  # fmt: skip
    return 0
