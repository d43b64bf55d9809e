"""The curated store: one Parquet partition per period (``year=YYYY``), written atomically.

A rerun of a period overwrites its partition (same path), never adds a second copy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)


def partition_path(root: Path, period: int, name: str = "tracks.parquet") -> Path:
    return root / f"year={period}" / name


def write_atomic(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` (Parquet or CSV by suffix) via a temporary name and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.suffix == ".csv":
        frame.to_csv(tmp, index=False)
    else:
        frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def write_partition(root: Path, period: int, frame: pd.DataFrame) -> Path:
    """Replace the curated partition of ``period`` with ``frame``; return its path."""
    path = write_atomic(frame, partition_path(root, period))
    logger.info("curated %d rows of %s at %s", len(frame), period, path)
    return path


def write_quarantine(root: Path, period: int, frame: pd.DataFrame) -> Path | None:
    """Replace the quarantine file of ``period`` (bad rows with their reasons); None if no bad rows."""
    path = partition_path(root, period, "rejected_rows.csv")
    if frame.empty:
        path.unlink(missing_ok=True)
        return None
    return write_atomic(frame, path)


def has_partition(root: Path, period: int) -> bool:
    return partition_path(root, period).exists()


def read_partition(root: Path, period: int) -> pd.DataFrame:
    path = partition_path(root, period)
    if not path.exists():
        raise FileNotFoundError(f"no curated data for {period} at {path}: run its ingest first")
    return pd.read_parquet(path)


def read_partitions(root: Path, periods: Iterable[int]) -> pd.DataFrame:
    """The curated rows of several periods, concatenated in period order."""
    frames = [read_partition(root, p) for p in sorted(set(periods))]
    if not frames:
        raise ValueError("no periods requested")
    return pd.concat(frames, ignore_index=True)


def available_periods(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return sorted(int(p.name.split("=", 1)[1]) for p in root.glob("year=*") if (p / "tracks.parquet").exists())
