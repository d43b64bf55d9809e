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
from collections.abc import Sequence
from pathlib import Path

from driftwheel import report, sources
from driftwheel.config import DataError, Settings, TrainingConfig
from driftwheel.replay import PeriodOutcome, replay
from driftwheel.sources import file as file_source
from driftwheel.sources.file import LandingError
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


DEFAULT_YEARS = (2008, 2020)  # the seed data's and the synthetic source's range


def data_years(settings: Settings) -> list[int]:
    """The years with rows in the file source's landing files, ascending; [] for the other sources
    (they can produce any year). Raises :class:`~driftwheel.config.DataError` for an unreadable
    landing file and :class:`~driftwheel.sources.file.LandingError` for a missing landing folder.

    The files are indexed in the state's landing index, so the run's first ingest does not parse them again."""
    if settings.source != "file":
        return []
    index = sources.index_dir(settings)
    return file_source.available_periods(settings.file_source, settings.dataset, settings.landing_dir, index)


def years_to_run(start: int | None, end: int | None, available: Sequence[int]) -> list[int]:
    """``start``..``end``; a bound not given is the data's first or last year (``available``), else 2008 or 2020."""
    first = start if start is not None else (available[0] if available else DEFAULT_YEARS[0])
    last = end if end is not None else (available[-1] if available else DEFAULT_YEARS[1])
    return list(range(first, last + 1))


def default_warmup(available: Sequence[int], training: TrainingConfig) -> tuple[int, int] | None:
    """The warm-up (first, last year) to use instead of the configured one, or None to keep it.

    None when the data can have any year (``available`` empty) or holds a configured warm-up year.
    Otherwise the configured years are absent (a file of 2016-2020 against 2008-2014, whose first
    model would pool one year, or of 2000-2005, whose years would all wait for 2014): the warm-up
    becomes the data's first years, as many as configured but at most half of them, so that
    later years remain to show what the flywheel does.
    """
    years = sorted(available)
    if not years or any(training.warmup_start <= y <= training.warmup_end for y in years):
        return None
    length = min(training.warmup_end - training.warmup_start + 1, max(1, len(years) // 2))
    return years[0], years[length - 1]


def warmup_note(training: TrainingConfig, available: Sequence[int], warmup: tuple[int, int]) -> str:
    """What the output says when :func:`default_warmup` replaced the configured warm-up."""
    pooled = str(warmup[0]) if warmup[0] == warmup[1] else f"{warmup[0]}-{warmup[1]}"
    return (
        f"warm-up: the configured years {training.warmup_start}-{training.warmup_end} are not in the data "
        f"({available[0]}-{available[-1]}); pooling {pooled} before the first model instead "
        "(FLYWHEEL_WARMUP_START / FLYWHEEL_WARMUP_END choose others)"
    )


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
        available = data_years(settings)
    except (DataError, LandingError) as error:
        print(f"error: {error}")
        return 1
    years = years_to_run(args.start, args.end, available)
    if not years:
        print(f"error: no years to replay (--start {args.start} is after --end {args.end})")
        return 1
    source = settings.source if settings.source != "file" else f"file, {settings.landing_dir.resolve()}"
    print(f"state directory: {settings.state_dir}  (source: {source}; MLflow: {settings.tracking_uri})", flush=True)
    warmup = default_warmup(available, settings.training)
    if warmup is not None:
        print(warmup_note(settings.training, available, warmup), flush=True)
        training = dataclasses.replace(settings.training, warmup_start=warmup[0], warmup_end=warmup[1])
        settings = dataclasses.replace(settings, training=training)
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
    print(report.format_legend())
    print()
    print(f"{len(finished)} years in {time.perf_counter() - started:.0f} s")
    print(f"drift reports: {settings.reports_dir}/year=<YYYY>/drift_<YYYY>_vs_<reference>.html")
    print(f"MLflow store: {settings.tracking_uri} (experiment {settings.experiment_name}); "
          f"rerunning a year is idempotent, deleting {settings.state_dir} starts over")  # fmt: skip
    return 0
