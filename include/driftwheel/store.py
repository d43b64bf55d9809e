"""The curated store: one Parquet partition per period (``year=YYYY``), written atomically.

A rerun of a period overwrites its partition (same path), never adds a second copy.
:func:`write_atomic` is the library's one way to replace a file (write a temporary name, then
rename), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)


def partition_path(root: Path, period: int, name: str = "tracks.parquet") -> Path:
    return root / f"year={period}" / name


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Create or replace ``path`` with what ``write`` writes to the temporary path it is given; return ``path``.

    The temporary file lies in the same folder (so the rename is atomic) and is hidden; it is removed
    if ``write`` fails, and ``path`` then keeps its old content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and a random part: concurrent writers (processes or threads) never share a temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: Path, text: str) -> Path:
    """Create or replace the text file ``path`` (UTF-8) atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_frame(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` (CSV if the suffix is ``.csv``, else Parquet) atomically, without its index."""
    if path.suffix == ".csv":
        return write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))
    return write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_partition(root: Path, period: int, frame: pd.DataFrame) -> Path:
    """Replace the curated partition of ``period`` with ``frame``; return its path."""
    path = write_frame(frame, partition_path(root, period))
    logger.info("curated %d rows of %s at %s", len(frame), period, path)
    return path


def write_quarantine(root: Path, period: int, frame: pd.DataFrame) -> Path | None:
    """Replace the quarantine file of ``period`` (bad rows with their reasons); None if no bad rows."""
    path = partition_path(root, period, "rejected_rows.csv")
    if frame.empty:
        path.unlink(missing_ok=True)
        return None
    return write_frame(frame, path)


def has_partition(root: Path, period: int) -> bool:
    return partition_path(root, period).exists()


def read_partition(root: Path, period: int, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """The curated rows of ``period``: every column, or only ``columns`` (Parquet reads no other)."""
    path = partition_path(root, period)
    if not path.exists():
        raise FileNotFoundError(f"no curated data for {period} at {path}: run its ingest first")
    return pd.read_parquet(path, columns=None if columns is None else list(columns))


def read_partitions(root: Path, periods: Iterable[int], columns: Iterable[str] | None = None) -> pd.DataFrame:
    """The curated rows of several periods (every column, or only ``columns``), concatenated in period order."""
    wanted = None if columns is None else list(columns)
    frames = [read_partition(root, p, wanted) for p in sorted(set(periods))]
    if not frames:
        raise ValueError("no periods requested")
    return pd.concat(frames, ignore_index=True)


# A period's run leaves this marker in its partition folder from ingest until finish_period. A
# marker that outlives its run means the run is still going, or failed or crashed: the next period
# must not start on top of it. States written before markers existed have none: all finished.
IN_PROGRESS = "_IN_PROGRESS"


def mark_in_progress(root: Path, period: int, run: str | None) -> None:
    """Record that a run of ``period`` has started (``run``: who, for the message of a refusal)."""
    marker = {"run": run, "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    write_text(partition_path(root, period, IN_PROGRESS), json.dumps(marker))


def mark_finished(root: Path, period: int) -> None:
    partition_path(root, period, IN_PROGRESS).unlink(missing_ok=True)


def in_progress(root: Path, period: int) -> dict[str, str | None] | None:
    """Who started ``period`` and when, if its run has not finished; None if it has (or never ran)."""
    path = partition_path(root, period, IN_PROGRESS)
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except ValueError:  # a marker cut short by a crash still means "not finished"
        return {"run": None, "started_at": None}


def available_periods(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return sorted(int(p.name.split("=", 1)[1]) for p in root.glob("year=*") if (p / "tracks.parquet").exists())
