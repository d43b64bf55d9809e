"""Validation of a landed batch against a declared schema (pandera).

A batch either passes with some rows quarantined (each with the rule it broke), or is rejected
whole — a required column is missing, or too many rows are bad — with an error that names the
file, the column and the rule. Validation never touches the landing files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from driftwheel.config import DatasetSpec, ValidationPolicy
from driftwheel.sources.file import SOURCE_FILE, SOURCE_ROW, Batch

logger = logging.getLogger(__name__)

REASON = "reason"

# Known ranges of the Spotify audio features; a data set's other features only need to be numeric.
_UNIT_INTERVAL = ("danceability", "energy", "speechiness", "acousticness", "instrumentalness", "liveness", "valence")
_FEATURE_CHECKS: dict[str, list[pa.Check]] = {
    **{name: [pa.Check.in_range(0.0, 1.0)] for name in _UNIT_INTERVAL},
    "tempo": [pa.Check.gt(0)],
    "loudness": [pa.Check.in_range(-60.0, 5.0)],
    "key": [pa.Check.isin(list(range(-1, 12)))],
    "mode": [pa.Check.isin([0, 1])],
    "duration_ms": [pa.Check.gt(0)],
    "time_signature": [pa.Check.in_range(0, 7)],
}
_INTEGER_FEATURES = {"key", "mode", "time_signature", "duration_ms"}


class BatchRejected(ValueError):
    """The whole batch is unusable; the message names the file(s), column and rule."""


@dataclass(frozen=True)
class ValidationResult:
    valid: pd.DataFrame  # spec columns only, ready for the curated store
    quarantined: pd.DataFrame  # the bad rows as they were read, plus provenance and a reason
    features: tuple[str, ...]  # the model features this batch provides


def build_schema(spec: DatasetSpec, features: tuple[str, ...], period: int) -> pa.DataFrameSchema:
    """The row-level schema of a period's batch for the given features."""
    columns: dict[str, pa.Column] = {
        spec.id_column: pa.Column(
            str, nullable=False, unique=True, report_duplicates="exclude_first", coerce=True
        ),
        spec.period_column: pa.Column(int, pa.Check.eq(period), coerce=True),
        spec.target: pa.Column(float, pa.Check.in_range(0, 100), nullable=False, coerce=True),
    }
    for name in features:
        dtype = int if name in _INTEGER_FEATURES else float
        columns[name] = pa.Column(dtype, _FEATURE_CHECKS.get(name, []), nullable=False, coerce=True)
    return pa.DataFrameSchema(columns, strict=False)


def _files(batch: Batch) -> str:
    return ", ".join(p.name for p in batch.files)


def required_columns(spec: DatasetSpec) -> tuple[str, ...]:
    mandatory = tuple(f for f in spec.features if f not in spec.optional_features)
    return (spec.id_column, spec.period_column, spec.target, *mandatory)


def validate_batch(batch: Batch, spec: DatasetSpec, policy: ValidationPolicy) -> ValidationResult:
    """Split ``batch`` into valid and quarantined rows, or raise :class:`BatchRejected`.

    Assumes ``batch.frame`` carries the provenance columns of :mod:`driftwheel.sources.file`.
    """
    frame = batch.frame
    missing = [c for c in required_columns(spec) if c not in frame.columns]
    if missing:
        raise BatchRejected(
            f"{_files(batch)}: required column '{missing[0]}' is missing "
            f"(rule: required_column; all missing: {', '.join(missing)}); batch {batch.period} rejected"
        )
    features = tuple(f for f in spec.features if f in frame.columns)
    absent = [f for f in spec.features if f not in frame.columns]
    if absent:
        logger.info("optional features absent from batch %s, left out: %s", batch.period, absent)

    schema = build_schema(spec, features, batch.period)
    reasons = pd.Series("", index=frame.index, dtype=object)
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as err:
        cases = err.failure_cases
        # A value that cannot be coerced fails coerce_dtype and dtype alike: report it once.
        cases = cases[~cases["check"].astype(str).str.startswith("dtype(")]
        row_cases = cases[cases["index"].notna()]
        for (column, check), group in row_cases.groupby(["column", "check"], sort=False):
            idx = group["index"].astype(int).unique()
            reasons.loc[idx] = reasons.loc[idx] + f"{column}: {check}; "
        # A check that errors on the whole column because some values are not numbers is a
        # consequence of those rows, already quarantined; any other column-wide failure is not.
        table_cases = cases[cases["index"].isna() & ~cases["column"].isin(row_cases["column"])]
        if len(table_cases):
            first = table_cases.iloc[0]
            raise BatchRejected(
                f"{_files(batch)}: column '{first['column']}' fails rule '{first['check']}' "
                f"for the whole batch; batch {batch.period} rejected"
            ) from err

    bad = reasons != ""
    bad_share = float(bad.mean()) if len(frame) else 1.0
    if bad_share > policy.max_bad_share:
        worst = (
            reasons[bad].str.split("; ").explode().loc[lambda s: s != ""].value_counts().head(3)
        )
        example = frame.loc[bad].iloc[0]
        rule_summary = "; ".join(f"{rule} ({count} rows)" for rule, count in worst.items())
        raise BatchRejected(
            f"{example[SOURCE_FILE]}: {bad.sum()} of {len(frame)} rows of {batch.period} break the schema "
            f"({bad_share:.1%} > max_bad_share {policy.max_bad_share:.1%}); e.g. line {example[SOURCE_ROW]}: "
            f"{reasons[bad].iloc[0].rstrip('; ')}. Most frequent: {rule_summary}. Batch rejected."
        )

    quarantined = frame.loc[bad].assign(**{REASON: reasons[bad].str.rstrip("; ")})
    keep = [spec.id_column, spec.period_column, *features, spec.target]
    keep += [c for c in spec.extra_columns if c in frame.columns]
    valid = frame.loc[~bad, keep].reset_index(drop=True)
    valid = schema.validate(valid)  # coerce dtypes of the good rows (they pass by construction)
    if len(quarantined):
        logger.warning(
            "batch %s: %d rows quarantined, e.g. %s line %s: %s",
            batch.period,
            len(quarantined),
            quarantined.iloc[0][SOURCE_FILE],
            quarantined.iloc[0][SOURCE_ROW],
            quarantined.iloc[0][REASON],
        )
    return ValidationResult(valid=valid, quarantined=quarantined.reset_index(drop=True), features=features)
