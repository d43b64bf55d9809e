"""The file source: a landing folder of CSV or Parquet files.

Files are read, never written: columns are renamed through the configured column map and the
requested period's rows are returned with their provenance (file name and line), so validation
errors can name the file and row.

Each file is read on its own. A file that cannot be read (empty, another encoding or delimiter,
a broken Parquet file) or that has no period column is an :class:`UnreadableFile` naming the file,
the reason and the column-map option that fixes it. Its periods cannot be known — it may hold
rows of any year — so it blocks every period until it is fixed or moved out of the landing folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from driftwheel.config import ColumnMapError, DataError, DatasetSpec, FileSourceConfig

logger = logging.getLogger(__name__)

SOURCE_FILE = "source_file"
SOURCE_ROW = "source_row"
SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")


class LandingError(RuntimeError):
    """The landing folder cannot provide the requested period at all."""


class UnreadableFile(LandingError, DataError):
    """Landing files cannot be read: one line per file with the reason and the option that fixes it.

    Deterministic (a :class:`DataError`): retrying the same files cannot help.
    """


# Why an unreadable file fails every period, in every message that reports one.
_BLOCKS_EVERY_PERIOD = (
    "its years cannot be known, so it blocks every year until it is fixed or moved out of the landing folder"
)
_OTHER_DELIMITERS = (";", "\t", "|")


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


def location(source_file: str, source_row: int) -> str:
    """Where a row came from, as a user finds it: a CSV's line (the header is line 1) or a Parquet row."""
    unit = "line" if source_file.lower().endswith(".csv") else "row"
    return f"{source_file} {unit} {source_row}"


def _unreadable(path: Path, reason: str) -> UnreadableFile:
    return UnreadableFile(f"{path.name}: {reason}; {_BLOCKS_EVERY_PERIOD}")


def _first_undecodable(path: Path, encoding: str) -> str:
    """Where ``path`` first stops being ``encoding`` text, e.g. "byte 0xe9 on line 2"."""
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        return f"byte 0x{data[err.start]:02x} on line {line}"
    return "an undecodable byte"  # not expected: pandas failed to decode it


def _read_csv(path: Path, source: FileSourceConfig) -> pd.DataFrame:
    try:
        # Blank lines are kept (as empty rows, dropped by the period filter) so row numbers stay
        # the file's line numbers.
        frame = pd.read_csv(
            path,
            low_memory=False,
            encoding=source.encoding,
            sep=source.delimiter,
            decimal=source.decimal,
            skip_blank_lines=False,
        )
    except UnicodeDecodeError as err:
        raise _unreadable(
            path,
            f"is not {source.encoding} text ({_first_undecodable(path, source.encoding)}); set \"encoding\" "
            f"to the file's encoding in the column map, e.g. \"encoding\": \"latin-1\"",
        ) from err
    except pd.errors.EmptyDataError as err:
        raise _unreadable(path, "is empty (no header line); remove it or write its header and rows") from err
    except pd.errors.ParserError as err:
        raise _unreadable(
            path,
            f"is not a CSV delimited by {source.delimiter!r} ({err}); set \"delimiter\" in the column map",
        ) from err
    if frame.shape[1] == 1:
        header = str(frame.columns[0])
        other = next((d for d in _OTHER_DELIMITERS if d in header), None)
        if other is not None:
            raise _unreadable(
                path,
                f"has a single column {header[:60]!r} when read with delimiter {source.delimiter!r}; "
                f"set \"delimiter\": {json.dumps(other)} in the column map "
                f"(and \"decimal\": \",\" if its numbers are written like 0,5)",
            )
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow

    try:
        return pd.read_parquet(path)
    except (pyarrow.ArrowException, OSError, ValueError) as err:
        raise _unreadable(
            path, f"is not a readable Parquet file ({type(err).__name__}: {err}); export it again"
        ) from err


def _read(path: Path, source: FileSourceConfig = FileSourceConfig()) -> pd.DataFrame:
    """The rows of one landing file as read. Raises :class:`UnreadableFile` naming the file."""
    if path.suffix.lower() == ".csv":
        return _read_csv(path, source)
    return _read_parquet(path)


def _row_numbers(path: Path, rows: int) -> range:
    """The file line of each CSV row (the header is line 1) or the 1-based row of a Parquet file."""
    return range(2, rows + 2) if path.suffix.lower() == ".csv" else range(1, rows + 1)


def _map_columns(frame: pd.DataFrame, source: FileSourceConfig, spec: DatasetSpec, path: Path) -> pd.DataFrame:
    frame = frame.rename(columns=dict(source.column_map))
    if spec.period_column not in frame.columns:
        if source.date_column is None:
            raise _unreadable(
                path,
                f"no column '{spec.period_column}' and no date_column configured to derive it from "
                f"(set \"date_column\" in the column map, or rename a column to '{spec.period_column}')",
            )
        date_col = source.column_map.get(source.date_column, source.date_column)
        if date_col not in frame.columns:
            raise _unreadable(
                path, f"date column '{source.date_column}' (\"date_column\" in the column map) is missing"
            )
        # A release date may be a bare year ("2016") or a full date; the year is what we need.
        dates = pd.to_datetime(frame[date_col].astype(str), errors="coerce", format="mixed")
        frame[spec.period_column] = dates.dt.year.astype("Int64")
    return frame


def _check_renames(source: FileSourceConfig, read: list[tuple[Path, pd.DataFrame]]) -> None:
    """Raise :class:`ColumnMapError` if a renamed source column is in none of the files read."""
    seen = {str(c) for _, raw in read for c in raw.columns}
    absent = [name for name in source.column_map if name not in seen]
    if read and absent:
        where = source.column_map_file or "(given in code)"
        raise ColumnMapError(
            f"column map {where}: key 'columns.{absent[0]}': no landing file has a column '{absent[0]}' "
            f"(files: {', '.join(p.name for p, _ in read)}); all absent: {', '.join(absent)}"
        )


def read_landing(source: FileSourceConfig, spec: DatasetSpec, landing_dir: Path) -> list[tuple[Path, pd.DataFrame]]:
    """Every landing file, each read once, renamed to the spec's columns, with provenance columns.

    Raises :class:`UnreadableFile` listing every file that cannot be read (one line each), and
    :class:`ColumnMapError` when the column map renames a column that no file has.
    """
    read: list[tuple[Path, pd.DataFrame]] = []
    problems: list[str] = []
    for path in landing_files(landing_dir, source.pattern):
        try:
            read.append((path, _read(path, source)))
        except UnreadableFile as err:
            problems.append(str(err))
    if problems:
        raise UnreadableFile("\n".join(problems))
    _check_renames(source, read)
    mapped: list[tuple[Path, pd.DataFrame]] = []
    for path, raw in read:
        try:
            frame = _map_columns(raw, source, spec, path)
        except UnreadableFile as err:
            problems.append(str(err))
            continue
        frame[SOURCE_FILE] = path.name
        frame[SOURCE_ROW] = _row_numbers(path, len(frame))
        mapped.append((path, frame))
    if problems:
        raise UnreadableFile("\n".join(problems))
    return mapped


def read_period(source: FileSourceConfig, spec: DatasetSpec, landing_dir: Path, period: int) -> Batch:
    """All rows of ``period`` across the landing files, renamed to the spec's columns.

    Every returned row carries ``source_file`` (the file's name) and ``source_row`` (its line in a
    CSV file, the header being line 1; its 1-based row in a Parquet file) so that a bad row can be
    traced back. Files without rows of the period are skipped. Raises :class:`UnreadableFile` if
    any landing file cannot be read (whatever the period: see the module docstring), and
    :class:`LandingError` when no file has rows of the period.
    """
    frames: list[pd.DataFrame] = []
    used: list[Path] = []
    for path, frame in read_landing(source, spec, landing_dir):
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
    for _, frame in read_landing(source, spec, landing_dir):
        values = pd.to_numeric(frame[spec.period_column], errors="coerce")
        periods.update(int(v) for v in values[np.isfinite(values)].unique())
    return sorted(periods)
