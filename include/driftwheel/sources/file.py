"""The file source: a landing folder of CSV or Parquet files.

Files are read, never written: columns are renamed through the configured column map and the
requested period's rows are returned with their provenance (file name and line), so validation
errors can name the file and row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from driftwheel.config import DatasetSpec, FileSourceConfig

logger = logging.getLogger(__name__)

SOURCE_FILE = "source_file"
SOURCE_ROW = "source_row"
SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")


class LandingError(RuntimeError):
    """The landing folder cannot provide the requested period at all."""


@dataclass(frozen=True)
class Batch:
    """One period's raw rows, renamed to the spec's column names, with provenance columns."""

    period: int
    frame: pd.DataFrame
    files: tuple[Path, ...]


def landing_files(landing_dir: Path, pattern: str = "*") -> list[Path]:
    """The readable files in ``landing_dir`` matching ``pattern``, sorted by name."""
    if not landing_dir.is_dir():
        raise LandingError(f"landing folder {landing_dir} does not exist")
    return sorted(
        p for p in landing_dir.glob(pattern) if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
    )


def _read(path: Path) -> pd.DataFrame:
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path, low_memory=False)
    return pd.read_parquet(path)


def _map_columns(frame: pd.DataFrame, source: FileSourceConfig, spec: DatasetSpec, path: Path) -> pd.DataFrame:
    frame = frame.rename(columns=dict(source.column_map))
    if spec.period_column not in frame.columns:
        if source.date_column is None:
            raise LandingError(
                f"{path.name}: no column '{spec.period_column}' and no date_column configured "
                f"to derive it from (set 'date_column' in the column map)"
            )
        date_col = source.column_map.get(source.date_column, source.date_column)
        if date_col not in frame.columns:
            raise LandingError(f"{path.name}: date column '{source.date_column}' is missing")
        # A release date may be a bare year ("2016") or a full date; the year is what we need.
        dates = pd.to_datetime(frame[date_col].astype(str), errors="coerce", format="mixed")
        frame[spec.period_column] = dates.dt.year.astype("Int64")
    return frame


def read_period(source: FileSourceConfig, spec: DatasetSpec, landing_dir: Path, period: int) -> Batch:
    """All rows of ``period`` across the landing files, renamed to the spec's columns.

    Every returned row carries ``source_file`` (the file's name) and ``source_row`` (its 1-based
    data line) so that a bad row can be traced back. Files without rows of the period are skipped.
    Raises :class:`LandingError` when no file has rows of the period.
    """
    frames: list[pd.DataFrame] = []
    used: list[Path] = []
    for path in landing_files(landing_dir, source.pattern):
        frame = _map_columns(_read(path), source, spec, path)
        frame[SOURCE_FILE] = path.name
        frame[SOURCE_ROW] = range(1, len(frame) + 1)
        period_values = pd.to_numeric(frame[spec.period_column], errors="coerce")
        frame = frame[period_values == period]
        if len(frame):
            frames.append(frame)
            used.append(path)
    if not frames:
        raise LandingError(f"no rows for {spec.period_column}={period} in {landing_dir} ({source.pattern})")
    batch = pd.concat(frames, ignore_index=True)
    logger.info("read %d rows of %s from %s", len(batch), period, ", ".join(p.name for p in used))
    return Batch(period=period, frame=batch, files=tuple(used))


def available_periods(source: FileSourceConfig, spec: DatasetSpec, landing_dir: Path) -> list[int]:
    """Every period with at least one row across the landing files, ascending."""
    periods: set[int] = set()
    for path in landing_files(landing_dir, source.pattern):
        values = pd.to_numeric(_map_columns(_read(path), source, spec, path)[spec.period_column], errors="coerce")
        periods.update(int(v) for v in values.dropna().unique())
    return sorted(periods)
