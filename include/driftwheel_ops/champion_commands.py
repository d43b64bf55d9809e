"""``python -m driftwheel history`` and ``python -m driftwheel rollback``: the champion's ledger and door.

Both talk to the registry only, never to Airflow: ``FLYWHEEL_MLFLOW_TRACKING_URI`` (a server or a
database), else ``FLYWHEEL_MLFLOW_DB_URI``, else the embedded default's PostgreSQL in the state
folder, which is used where it runs (under ``make ui``, say) and started for the command otherwise.
A rollback goes through the same door as a promotion: the promotion lock and the ledger.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from driftwheel import ledger, steps
from driftwheel.config import Settings


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    history = commands.add_parser("history", help="every promotion, refusal, rejection and rollback, oldest first")
    history.set_defaults(func=show_history)
    rollback = commands.add_parser("rollback", help="restore an earlier champion (through the promotion lock)")
    rollback.add_argument("--to", dest="to_version", help="version to restore (default: the one the champion replaced)")
    rollback.add_argument("--reason", required=True, help="why; kept in the ledger")
    rollback.set_defaults(func=roll_back)


def show_history(args: argparse.Namespace) -> int:
    with _registry_settings() as settings:
        entries = steps.history(settings)
    if not entries:
        print(f"no promotion of {settings.model_name} yet")
        return 0
    print(f"ledger of {settings.model_name} (MLflow experiment {ledger.experiment_name(settings.experiment_name)}):")
    print(ledger.format_entries(entries))
    return 0


def roll_back(args: argparse.Namespace) -> int:
    with _registry_settings() as settings:
        try:
            restored = steps.rollback_champion(settings, args.reason, args.to_version)
        except (LookupError, ValueError) as refused:
            print(f"rollback refused: {refused}")
            return 1
    print(
        f"{settings.model_name}: champion v{restored['previous_version']} -> v{restored['champion_version']} ({args.reason})"
    )
    return 0


@contextmanager
def _registry_settings() -> Iterator[Settings]:
    """The environment's settings, pointed at the registry (see the module docstring)."""
    settings = Settings.from_env()
    uri = os.environ.get("FLYWHEEL_MLFLOW_TRACKING_URI") or os.environ.get("FLYWHEEL_MLFLOW_DB_URI")
    if uri:
        yield dataclasses.replace(settings, mlflow_tracking_uri=uri)
        return
    pgdata = settings.state_dir / "pg"
    running = _running_embedded_uri(pgdata, "mlflow")
    if running:
        yield dataclasses.replace(settings, mlflow_tracking_uri=running)
        return
    if not pgdata.exists():
        raise SystemExit(f"nothing has run in {settings.state_dir} yet (no embedded database): run `make demo` first")
    from driftwheel_ops.local_stack import _EmbeddedPostgres

    server = _EmbeddedPostgres(pgdata)
    server.start()
    try:
        yield dataclasses.replace(settings, mlflow_tracking_uri=server.uri("mlflow"))
    finally:
        server.stop()


def _running_embedded_uri(pgdata: Path, database: str) -> str | None:
    """The URI of the embedded server already running on ``pgdata`` (under ``make ui``), or None.

    postmaster.pid's lines: pid, data dir, start time, port, socket dir, ...
    """
    import psutil

    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        if not psutil.pid_exists(int(lines[0])):
            return None
        port, socket_dir = lines[3].strip(), lines[4].strip()
    except (OSError, IndexError, ValueError):
        return None
    return f"postgresql+psycopg2://postgres@/{database}?host={socket_dir}&port={port}"
