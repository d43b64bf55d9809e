"""Validation of a landed batch against a declared schema (pandera).

A batch either passes with some rows quarantined (each with the column and rule it broke), or is
rejected whole — a required column is missing, too many rows are bad, or a feature the champion
needs is absent — with an error that names the file, the line, the column and the rule.
Validation never touches the landing files.

Every number must be finite; integer columns must hold whole numbers (``3.7`` in ``key`` is a bad
row, never truncated to 3); features with a known meaning must lie in their plausible range.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from driftwheel.config import DataError, DatasetSpec, ValidationPolicy
from driftwheel.sources.file import SOURCE_FILE, SOURCE_ROW, Batch, empty_headers, location

logger = logging.getLogger(__name__)

REASON = "reason"

# Plausible bounds of the Spotify audio features; a data set's other features only need to be
# finite numbers. tempo: the seed data spans 0-220 BPM, and beyond 300 no music is notated.
# duration_ms: the seed data spans 30 s - 90 min; 1 s - 3 h keeps long mixes and live sets and
# refuses seconds written as milliseconds and overflowed values such as 1e15.
_UNIT_INTERVAL = ("danceability", "energy", "speechiness", "acousticness", "instrumentalness", "liveness", "valence")
MAX_TEMPO = 300.0
DURATION_MS_RANGE = (1_000, 3 * 3_600_000)
_FEATURE_CHECKS: dict[str, list[pa.Check]] = {
    **{name: [pa.Check.in_range(0.0, 1.0)] for name in _UNIT_INTERVAL},
    "tempo": [pa.Check.gt(0), pa.Check.le(MAX_TEMPO)],
    "loudness": [pa.Check.in_range(-60.0, 5.0)],
    "key": [pa.Check.isin(list(range(-1, 12)))],
    "mode": [pa.Check.isin([0, 1])],
    "duration_ms": [pa.Check.in_range(*DURATION_MS_RANGE)],
    "time_signature": [pa.Check.in_range(0, 7)],
}
_INTEGER_FEATURES = {"key", "mode", "time_signature", "duration_ms"}
# Values are read as floats and checked before they become integers, so that nothing is truncated.
_FINITE = pa.Check(lambda s: np.isfinite(s), name="finite", error="finite (not inf, -inf)")
_WHOLE = pa.Check(lambda s: s == np.floor(s), name="integer", error="integer (no fraction)")
# Each pass can only check a column whose values all parse as numbers; the rows that do not are
# set aside and the rest checked again. Two passes suffice; the bound guards against surprises.
_MAX_PASSES = 4


class BatchRejected(DataError):
    """The whole batch is unusable; the message names the file(s), line, column and rule.

    ``quarantined`` holds the bad rows found before the batch was rejected (with provenance and
    a reason), so they can be written to quarantine; it may be empty.
    """

    def __init__(self, message: str, quarantined: pd.DataFrame | None = None) -> None:
        super().__init__(message)
        self.quarantined = quarantined if quarantined is not None else pd.DataFrame()


@dataclass(frozen=True)
class ValidationResult:
    valid: pd.DataFrame  # spec columns only, ready for the curated store
    quarantined: pd.DataFrame  # the bad rows as they were read, plus provenance and a reason
    features: tuple[str, ...]  # the model features this batch provides


def _in_range(bounds: tuple[float, float]) -> pa.Check:
    """A declared range's check; whole bounds stay whole, so the rule reads ``in_range(0, 100)``."""
    low, high = (int(b) if float(b).is_integer() else b for b in bounds)
    return pa.Check.in_range(low, high)


def build_schema(spec: DatasetSpec, features: tuple[str, ...], period: int) -> pa.DataFrameSchema:
    """The row-level schema of a period's batch for the given features.

    Numbers are checked as floats (integer columns additionally for a zero fraction); duplicate
    ids are found by :func:`duplicate_reasons`, which can name the first occurrence's file.
    """
    columns: dict[str, pa.Column] = {
        spec.id_column: pa.Column(str, nullable=False, coerce=True),
        spec.period_column: pa.Column(int, pa.Check.eq(period), coerce=True),
        spec.target: pa.Column(float, [_FINITE, _in_range(spec.target_range)], nullable=False, coerce=True),
    }
    for name in features:
        # A range declared in the column map ("range") replaces the built-in checks of a feature.
        plausible = [_in_range(spec.ranges[name])] if name in spec.ranges else _FEATURE_CHECKS.get(name, [])
        checks = [_FINITE, *([_WHOLE] if name in _INTEGER_FEATURES else []), *plausible]
        columns[name] = pa.Column(float, checks, nullable=False, coerce=True)
    return pa.DataFrameSchema(columns, strict=False)


def _files(batch: Batch) -> str:
    return ", ".join(p.name for p in batch.files)


def required_columns(spec: DatasetSpec) -> tuple[str, ...]:
    mandatory = tuple(f for f in spec.features if f not in spec.optional_features)
    return (spec.id_column, spec.period_column, spec.target, *mandatory)


def require_features(
    batch_features: Iterable[str], needed: Iterable[str], champion_version: str, source: str = "the batch"
) -> None:
    """Raise :class:`BatchRejected` if the batch lacks a column the champion model needs as input.

    Without it the champion cannot score the batch (the production error, the drift reference);
    the message names ``source`` (e.g. the batch's files), the missing columns and the champion's version.
    """
    present = set(batch_features)
    missing = [name for name in needed if name not in present]
    if missing:
        raise BatchRejected(
            f"{source} lacks column(s) {', '.join(repr(m) for m in missing)} that the champion "
            f"(version {champion_version}) needs as input (rule: champion_features); add them to the "
            f'landing files or to "features"/"columns" in the column map'
        )


def duplicate_reasons(frame: pd.DataFrame, id_column: str) -> pd.Series:
    """Per row, "" or why it is a duplicate: every occurrence of an id after the first, naming
    where the first one is (its file may be another file of the batch)."""
    ids = frame[id_column].astype("string")
    duplicated = ids.duplicated(keep="first") & ids.notna()
    reasons = pd.Series("", index=frame.index, dtype=object)
    if duplicated.any():
        first = frame.loc[~ids.duplicated(keep="first") & ids.notna()]
        where = pd.Series(
            [location(f, r) for f, r in zip(first[SOURCE_FILE], first[SOURCE_ROW])], index=ids[first.index]
        )
        reasons[duplicated] = [f"{id_column}: unique (duplicate of {where[i]}); " for i in ids[duplicated]]
    return reasons


def _schema_reasons(frame: pd.DataFrame, schema: pa.DataFrameSchema, batch: Batch) -> pd.Series:
    """Per row, "" or the "column: rule; " failures of ``schema``.

    Raises :class:`BatchRejected` for a rule that fails for the whole column (not row by row).
    """
    reasons = pd.Series("", index=frame.index, dtype=object)
    remaining = frame
    for _ in range(_MAX_PASSES):
        try:
            schema.validate(remaining, lazy=True)
            return reasons
        except SchemaErrors as err:
            cases = err.failure_cases
            # A value that cannot be coerced fails coerce_dtype and dtype alike: report it once.
            cases = cases[~cases["check"].astype(str).str.startswith("dtype(")]
            row_cases = cases[cases["index"].notna()]
            if row_cases.empty:
                first = cases.iloc[0]
                raise BatchRejected(
                    f"{_files(batch)}: column '{first['column']}' fails rule '{first['check']}' "
                    f"for the whole batch; batch {batch.period} rejected"
                ) from err
            for (column, check), group in row_cases.groupby(["column", "check"], sort=False):
                idx = group["index"].astype(int).unique()
                reasons.loc[idx] = reasons.loc[idx] + f"{column}: {check}; "
            remaining = remaining.loc[reasons.loc[remaining.index] == ""]
    return reasons


def _missing_column_hint(frame: pd.DataFrame, missing: str, spec: DatasetSpec) -> str:
    """How the column map can provide ``missing``: a column with an empty header (a saved index,
    often the ids) renamed to it, or ids hashed from other columns; "" if no hint applies."""
    hint = ""
    unnamed = empty_headers(frame.columns)
    if unnamed:
        hint += (
            f"; column '{unnamed[0]}' is one whose header is empty in the file: if it holds {missing}, "
            f'name it in the column map: "columns": {{"{unnamed[0]}": "{missing}"}}'
        )
    if missing == spec.id_column:
        named = [c for c in (spec.artist_column, spec.title_column) if c and c in frame.columns]
        example = json.dumps(named or ["<column>", "<column>"])
        hint += f'; a file without ids can have them made from other columns: "id_from": {example}'
    return hint


# pandera's names of the checks that bound a value (as they appear in a rejection's reasons).
_RANGE_RULE = re.compile(r"^(in_range|greater_than|less_than|greater_than_or_equal_to|less_than_or_equal_to)\(")


def _scale_hint(reasons: pd.Series, frame: pd.DataFrame, spec: DatasetSpec) -> str:
    """Where the values of the columns that broke their range lie, and the column-map keys that
    declare another scale or range; "" if no range rule failed."""
    broken: list[str] = []
    for reason in reasons[reasons != ""]:
        for part in reason.split("; "):
            column, _, rule = part.partition(": ")
            if _RANGE_RULE.match(rule) and column not in broken:
                broken.append(column)

    def seen(column: str) -> str:
        values = pd.to_numeric(frame[column], errors="coerce")
        return f"'{column}' lies in {values.min():g}..{values.max():g}"

    hints = []
    features = [c for c in broken if c != spec.target]
    if features:
        example = {features[0]: {"from": [0, 100], "to": [0, 1]}}
        seconds = ', or {"duration_ms": {"multiply": 1000}} for seconds' if "duration_ms" in features else ""
        hints.append(
            f'{", ".join(map(seen, features))}: if on another scale, "scale" it '
            f'(e.g. "scale": {json.dumps(example)}{seconds}), or declare its "range"'
        )
    if spec.target in broken:
        hints.append(f'{seen(spec.target)} (the label): declare its "label_range", or "scale" it')
    return " Column map: " + "; ".join(hints) + "." if hints else ""


def validate_batch(batch: Batch, spec: DatasetSpec, policy: ValidationPolicy) -> ValidationResult:
    """Split ``batch`` into valid and quarantined rows, or raise :class:`BatchRejected`.

    Assumes ``batch.frame`` carries the provenance columns of :mod:`driftwheel.sources.file`.
    The valid rows' integer features come out as integers, all other features as floats.
    """
    frame = batch.frame
    missing = [c for c in required_columns(spec) if c not in frame.columns]
    if missing:
        raise BatchRejected(
            f"{_files(batch)}: required column '{missing[0]}' is missing "
            f"(rule: required_column; all missing: {', '.join(missing)}); batch {batch.period} rejected"
            + _missing_column_hint(frame, missing[0], spec)
        )
    features = tuple(f for f in spec.features if f in frame.columns)
    absent = [f for f in spec.features if f not in frame.columns]
    if absent:
        logger.info("optional features absent from batch %s, left out: %s", batch.period, absent)

    schema = build_schema(spec, features, batch.period)
    reasons = _schema_reasons(frame, schema, batch) + duplicate_reasons(frame, spec.id_column)
    bad = reasons != ""
    quarantined = frame.loc[bad].assign(**{REASON: reasons[bad].str.rstrip("; ")}).reset_index(drop=True)
    bad_share = float(bad.mean()) if len(frame) else 1.0
    if bad_share > policy.max_bad_share:
        worst = reasons[bad].str.split("; ").explode().loc[lambda s: s != ""].value_counts().head(3)
        example = quarantined.iloc[0]
        rule_summary = "; ".join(f"{rule} ({count} rows)" for rule, count in worst.items())
        raise BatchRejected(
            f"{location(example[SOURCE_FILE], example[SOURCE_ROW])}: {example[REASON]} "
            f"(column: rule). {bad.sum()} of {len(frame)} rows of {batch.period} break the schema "
            f"({bad_share:.1%} > max_bad_share {policy.max_bad_share:.1%}); most frequent: {rule_summary}. "
            f"Batch rejected; the bad rows are in quarantine." + _scale_hint(reasons, frame, spec),
            quarantined,
        )

    keep = [spec.id_column, spec.period_column, *features, spec.target]
    keep += [c for c in spec.extra_columns if c in frame.columns]
    valid = frame.loc[~bad, keep].reset_index(drop=True)
    valid = schema.validate(valid)  # coerce dtypes of the good rows (they pass by construction)
    integers = [f for f in features if f in _INTEGER_FEATURES]
    valid[integers] = valid[integers].astype("int64")  # whole numbers, checked above
    if len(quarantined):
        logger.warning(
            "batch %s: %d rows quarantined, e.g. %s: %s",
            batch.period,
            len(quarantined),
            location(quarantined.iloc[0][SOURCE_FILE], quarantined.iloc[0][SOURCE_ROW]),
            quarantined.iloc[0][REASON],
        )
    return ValidationResult(valid=valid, quarantined=quarantined, features=features)
