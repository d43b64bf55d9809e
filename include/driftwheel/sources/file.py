"""The file source: a landing folder of CSV or Parquet files.

Files are read, never written: columns are renamed through the configured column map, rescaled
(its ``scale``), given ids hashed from other columns when they have none (its ``id_from``), and the
requested period's rows are returned with their provenance (file name and line), so validation
errors can name the file and row.

Each file is read on its own. A file that cannot be read (empty, another encoding or delimiter,
a broken Parquet file) or that has no period column is an :class:`UnreadableFile` naming the file,
the reason and the column-map option that fixes it. Its periods cannot be known — it may hold
rows of any year — so it blocks every period until it is fixed or moved out of the landing folder.

Each file is parsed once: :func:`index_landing` records, by the file's content hash, which periods
it holds, and keeps its rows split by period, so a file holding every year is not parsed again for
each year (see :class:`LandingIndex`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftwheel import store
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
_EMPTY_HEADER = re.compile(r"Unnamed: \d+")


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
    return sorted(p for p in landing_dir.glob(pattern) if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)


def location(source_file: str, source_row: int) -> str:
    """Where a row came from, as a user finds it: a CSV's line (the header is line 1) or a Parquet row."""
    unit = "line" if source_file.lower().endswith(".csv") else "row"
    return f"{source_file} {unit} {source_row}"


def empty_headers(columns: Iterable[object]) -> list[str]:
    """The columns whose CSV header is empty: pandas names them ``Unnamed: <position>``."""
    return [str(c) for c in columns if _EMPTY_HEADER.fullmatch(str(c))]


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
            f'is not {source.encoding} text ({_first_undecodable(path, source.encoding)}); set "encoding" '
            f'to the file\'s encoding in the column map, e.g. "encoding": "latin-1"',
        ) from err
    except pd.errors.EmptyDataError as err:
        raise _unreadable(path, "is empty (no header line); remove it or write its header and rows") from err
    except pd.errors.ParserError as err:
        raise _unreadable(
            path,
            f'is not a CSV delimited by {source.delimiter!r} ({err}); set "delimiter" in the column map',
        ) from err
    if frame.shape[1] == 1:
        header = str(frame.columns[0])
        other = next((d for d in _OTHER_DELIMITERS if d in header), None)
        if other is not None:
            raise _unreadable(
                path,
                f"has a single column {header[:60]!r} when read with delimiter {source.delimiter!r}; "
                f'set "delimiter": {json.dumps(other)} in the column map '
                f'(and "decimal": "," if its numbers are written like 0,5)',
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
    for column, (factor, offset) in source.scale.items():
        if column in frame.columns:  # an absent feature is validation's to report (or optional)
            frame[column] = _rescaled(frame[column], factor, offset)
    if source.id_from and spec.id_column not in frame.columns:
        frame[spec.id_column] = _hashed_ids(frame, source, path)
    return frame


def _rescaled(values: pd.Series, factor: float, offset: float) -> pd.Series:
    """``values * factor + offset``; a value that is no number is kept as read, for validation to
    report as it is in the file."""
    numbers = pd.to_numeric(values, errors="coerce")
    scaled = numbers * factor + offset
    if values.dtype.kind in "biuf":
        return scaled
    return scaled.astype(object).where(numbers.notna() | values.isna(), values)


def _id_text(value: object) -> str:
    """A value as text, the same whether pandas read its column as integers or (with a gap) floats."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _hashed_ids(frame: pd.DataFrame, source: FileSourceConfig, path: Path) -> pd.Series:
    """Each row's id: the first 16 hex digits of the SHA-1 of its ``id_from`` values as text,
    joined by the unit separator (stable across runs and machines, unlike Python's ``hash``).
    A row with none of the values has no id (validation quarantines it)."""
    columns = []
    for name in source.id_from:
        column = name if name in frame.columns else source.column_map.get(name, name)
        if column not in frame.columns:
            raise _unreadable(
                path,
                f"column '{name}' of \"id_from\" in the column map is missing (rule: id_from; columns: "
                f"{', '.join(map(str, frame.columns[:30]))})",
            )
        columns.append(column)
    if frame.empty:
        return pd.Series([], index=frame.index, dtype=object)
    texts = frame[columns].map(_id_text)
    joined = texts.agg("\x1f".join, axis=1)
    ids = joined.map(lambda text: hashlib.sha1(text.encode("utf-8")).hexdigest()[:16])
    return ids.where((texts != "").any(axis=1), None)


def _check_renames(source: FileSourceConfig, columns: Mapping[str, Iterable[str]]) -> None:
    """Raise :class:`ColumnMapError` if a renamed source column is in none of the files (name -> columns)."""
    seen = {str(c) for names in columns.values() for c in names}
    absent = [name for name in source.column_map if name not in seen]
    if columns and absent:
        where = source.column_map_file or "(given in code)"
        raise ColumnMapError(
            f"column map {where}: key 'columns.{absent[0]}': no landing file has a column '{absent[0]}' "
            f"(files: {', '.join(columns)}); all absent: {', '.join(absent)}"
        )


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- the landing index -----------------------------------------------------------------------------
# A landing file is parsed once: its rows are split by period into Parquet slices under the index
# folder, and the index records which periods the file holds. Both are keyed by the file's content
# hash, so a rewritten file is parsed again and a renamed one is not. Bump on any change of the
# slices' or the index's layout.
INDEX_FORMAT = 1


@dataclass(frozen=True)
class IndexedFile:
    """What the index knows of one landing file (by content hash)."""

    path: Path
    sha256: str
    columns: tuple[str, ...]  # as read, before the column map renames them
    rows: Mapping[int, int]  # period -> rows
    labeled_rows: Mapping[int, int]  # period -> rows with a target value (empty without a target column)


def _index_key(source: FileSourceConfig, spec: DatasetSpec, landing_dir: Path) -> str:
    """One index per landing folder and way of reading it: a changed column map reads files anew."""
    reading = {
        "format": INDEX_FORMAT,
        "folder": str(landing_dir.resolve()),
        "encoding": source.encoding,
        "delimiter": source.delimiter,
        "decimal": source.decimal,
        "column_map": sorted(source.column_map.items()),
        "date_column": source.date_column,
        "scale": sorted((k, list(v)) for k, v in source.scale.items()),
        "id_from": list(source.id_from),
        "id_column": spec.id_column,
        "period_column": spec.period_column,
        "target": spec.target,
    }
    return hashlib.sha256(json.dumps(reading, sort_keys=True).encode()).hexdigest()[:16]


def _periods(frame: pd.DataFrame, spec: DatasetSpec) -> dict[int, pd.DataFrame]:
    """The rows of each period (a whole number in the period column), in file order; other rows are dropped."""
    values = pd.to_numeric(frame[spec.period_column], errors="coerce")
    numbers = values.dropna().astype(float)
    whole = numbers[np.isfinite(numbers) & (numbers == np.floor(numbers))]
    return {int(p): frame[values == p] for p in sorted(whole.unique())}


def _restore_missing(slice_: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A CSV slice as the CSV reader returned it: Parquet gives back a text column's NaN as None."""
    if path.suffix.lower() != ".csv":
        return slice_
    for column in slice_.select_dtypes(include="object").columns:
        slice_[column] = slice_[column].where(slice_[column].notna(), np.nan)
    return slice_


class LandingIndex:
    """Which periods each landing file holds, built once per file and kept under ``index_dir``.

    :func:`index_landing` builds it. Files whose content hash the saved index knows are not read
    again; the others are parsed once, their rows split by period into Parquet slices, and the
    index is saved (atomically; last writer wins, a lost entry only costs a re-read). Landing
    files are only read. Without ``index_dir`` nothing is kept and every file is parsed.
    """

    def __init__(
        self,
        source: FileSourceConfig,
        spec: DatasetSpec,
        landing_dir: Path,
        files: tuple[IndexedFile, ...],
        index_dir: Path | None,
        fresh: Mapping[str, dict[int, pd.DataFrame]],
    ) -> None:
        self.source = source
        self.spec = spec
        self.landing_dir = landing_dir
        self.files = files
        self._dir = index_dir
        self._fresh = dict(fresh)  # sha256 -> period -> rows, of the files parsed by this index

    def periods(self) -> list[int]:
        """Every period with at least one row across the landing files, ascending."""
        return sorted({p for f in self.files for p in f.rows})

    def files_with(self, period: int) -> tuple[Path, ...]:
        """The files holding rows of ``period``, by name; raises :class:`LandingError` if none does."""
        used = tuple(f.path for f in self.files if f.rows.get(period))
        if not used:
            raise LandingError(
                f"no rows for {self.spec.period_column}={period} in {self.landing_dir} ({self.source.pattern})"
            )
        return used

    def read_period(self, period: int) -> Batch:
        """All rows of ``period`` across the landing files, renamed to the spec's columns.

        Every returned row carries ``source_file`` (the file's name) and ``source_row`` (its line
        in a CSV file, the header being line 1; its 1-based row in a Parquet file) so that a bad row
        can be traced back. Raises :class:`LandingError` when no file has rows of the period.
        """
        used = self.files_with(period)
        frames = [self._rows(f, period) for f in self.files if f.path in used]
        batch = pd.concat(frames, ignore_index=True)
        logger.info("read %d rows of %s from %s", len(batch), period, ", ".join(p.name for p in used))
        return Batch(period=period, frame=batch, files=used)

    def _rows(self, file: IndexedFile, period: int) -> pd.DataFrame:
        fresh = self._fresh.get(file.sha256)
        if fresh is None:
            try:
                fresh = {period: _restore_missing(pd.read_parquet(self._slice(file.sha256, period)), file.path)}
            except FileNotFoundError:  # removed by a concurrent update of the index: parse the file
                logger.info("landing index: no slice of %s for %s, reading the file", file.path.name, period)
                fresh = _parse(self.source, self.spec, file.path)
                self._fresh[file.sha256] = fresh
        rows = fresh[period].copy()
        rows.insert(len(rows.columns) - 1, SOURCE_FILE, file.path.name)  # before source_row
        return rows

    def _slice(self, sha: str, period: int) -> Path:
        if self._dir is None:
            raise FileNotFoundError("no index folder")
        return self._dir / sha / f"{period}.parquet"


def _by_period(raw: pd.DataFrame, source: FileSourceConfig, spec: DatasetSpec, path: Path) -> dict[int, pd.DataFrame]:
    """A landing file's rows as read, mapped, with ``source_row`` (not ``source_file``: a copy has
    other names), by period. Raises :class:`UnreadableFile` if the file has no period column."""
    frame = _map_columns(raw, source, spec, path)
    frame[SOURCE_ROW] = _row_numbers(path, len(frame))
    return _periods(frame, spec)


def _parse(source: FileSourceConfig, spec: DatasetSpec, path: Path) -> dict[int, pd.DataFrame]:
    return _by_period(_read(path, source), source, spec, path)


def _labeled(by_period: Mapping[int, pd.DataFrame], spec: DatasetSpec) -> dict[int, int]:
    return {
        p: int(rows[spec.target].notna().sum())
        for p, rows in by_period.items()
        if spec.target in rows.columns and rows[spec.target].notna().any()
    }


def _load_index(folder: Path | None) -> dict[str, Any]:
    """The saved index of ``folder`` (``files``: name -> hash, ``entries``: hash -> what the file holds)."""
    empty: dict[str, Any] = {"format": INDEX_FORMAT, "files": {}, "entries": {}}
    path = None if folder is None else folder / "index.json"
    if path is None or not path.exists():
        return empty
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # only a cache: rebuild it
        logger.warning("landing index %s is unreadable; the landing files are read again", path)
        return empty
    return saved if saved.get("format") == INDEX_FORMAT else empty


def _save_index(folder: Path, saved: dict[str, Any], landing_dir: Path) -> None:
    """Keep only the files still in the landing folder and their entries; drop the others' slices."""
    files = {name: sha for name, sha in saved["files"].items() if (landing_dir / name).is_file()}
    entries = {sha: entry for sha, entry in saved["entries"].items() if sha in set(files.values())}
    store.write_text(folder / "index.json", json.dumps({**saved, "files": files, "entries": entries}, indent=1))
    for stale in set(saved["entries"]) - set(entries):
        shutil.rmtree(folder / stale, ignore_errors=True)


def _write_slices(folder: Path, sha: str, by_period: Mapping[int, pd.DataFrame]) -> bool:
    """Write a parsed file's rows, one Parquet slice per period; False if Parquet cannot hold them."""
    import pyarrow

    try:
        for period, rows in by_period.items():
            store.write_frame(rows, folder / sha / f"{period}.parquet")
    except (pyarrow.ArrowException, ValueError, TypeError) as err:  # e.g. two columns renamed alike
        logger.warning("landing index: rows of hash %s not kept (%s); the file is read each time", sha[:12], err)
        shutil.rmtree(folder / sha, ignore_errors=True)
        return False
    return True


def index_landing(
    source: FileSourceConfig, spec: DatasetSpec, landing_dir: Path, index_dir: Path | None = None
) -> LandingIndex:
    """The index of the landing files matching ``source.pattern``; files not indexed yet are parsed once.

    ``index_dir`` is the folder under which indexes are kept (one per landing folder and way of
    reading it); None keeps nothing, so every file is parsed. Raises :class:`UnreadableFile` listing
    every file that cannot be read (one line each; its periods cannot be known, so it blocks every
    period), and :class:`ColumnMapError` when the column map renames a column that no file has.
    """
    folder = None if index_dir is None else index_dir / _index_key(source, spec, landing_dir)
    saved = _load_index(folder)
    entries: dict[str, dict[str, Any]] = dict(saved["entries"])
    paths = landing_files(landing_dir, source.pattern)
    hashes = {path: sha256(path) for path in paths}

    read: dict[Path, pd.DataFrame] = {}
    problems: list[str] = []
    for path in paths:
        if hashes[path] not in entries:
            try:
                read[path] = _read(path, source)
            except UnreadableFile as err:
                problems.append(str(err))
    if problems:
        raise UnreadableFile("\n".join(problems))
    _check_renames(source, {p.name: read[p].columns if p in read else entries[hashes[p]]["columns"] for p in paths})

    fresh: dict[str, dict[int, pd.DataFrame]] = {}
    for path, raw in read.items():
        try:
            by_period = fresh[hashes[path]] = _by_period(raw, source, spec, path)
        except UnreadableFile as err:
            problems.append(str(err))
            continue
        entries[hashes[path]] = {
            "columns": [str(c) for c in raw.columns],
            "rows": {str(p): len(rows) for p, rows in by_period.items()},
            "labeled_rows": {str(p): n for p, n in _labeled(by_period, spec).items()},
        }
    if problems:
        raise UnreadableFile("\n".join(problems))
    if read:
        logger.info("landing index: parsed %s", ", ".join(p.name for p in read))

    if folder is not None:
        kept = {sha for sha in fresh if _write_slices(folder, sha, fresh[sha])}
        names = {p.name: hashes[p] for p in paths if hashes[p] in saved["entries"] or hashes[p] in kept}
        if kept or any(saved["files"].get(name) != sha for name, sha in names.items()):
            saved["entries"].update({sha: entries[sha] for sha in kept})
            saved["files"].update(names)
            _save_index(folder, saved, landing_dir)

    files = tuple(
        IndexedFile(
            path=p,
            sha256=hashes[p],
            columns=tuple(entries[hashes[p]]["columns"]),
            rows={int(k): int(v) for k, v in entries[hashes[p]]["rows"].items()},
            labeled_rows={int(k): int(v) for k, v in entries[hashes[p]]["labeled_rows"].items()},
        )
        for p in paths
    )
    return LandingIndex(source, spec, landing_dir, files, folder, fresh)


def read_period(
    source: FileSourceConfig, spec: DatasetSpec, landing_dir: Path, period: int, index_dir: Path | None = None
) -> Batch:
    """All rows of ``period`` across the landing files (see :meth:`LandingIndex.read_period`).

    Files without rows of the period are not read (once indexed). Raises :class:`UnreadableFile` if
    any landing file cannot be read (whatever the period: see the module docstring), and
    :class:`LandingError` when no file has rows of the period.
    """
    return index_landing(source, spec, landing_dir, index_dir).read_period(period)


def available_periods(
    source: FileSourceConfig, spec: DatasetSpec, landing_dir: Path, index_dir: Path | None = None
) -> list[int]:
    """Every period with at least one row across the landing files, ascending."""
    return index_landing(source, spec, landing_dir, index_dir).periods()
