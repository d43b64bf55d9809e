"""Drift of a new period against the champion's training data, with Evidently 0.7.

Feature drift comes from ``DataDriftPreset`` (per-column tests chosen by Evidently for the column
type and sample size), target drift from ``ValueDrift`` on the label. The HTML and JSON reports
are written atomically under the period's folder; the caller logs them to MLflow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftwheel import store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftResult:
    drift_share: float
    drifted_columns: int
    column_scores: dict[str, float]
    column_drifted: dict[str, bool]
    target_drift_score: float
    target_drifted: bool
    html_path: Path
    json_path: Path


def _is_drifted(metric: dict[str, Any]) -> bool:
    config = metric["config"]
    value = float(metric["value"])
    # p-value tests flag drift below the threshold; distance measures at or above it.
    if "p_value" in config.get("method", ""):
        return value < float(config["threshold"])
    return value >= float(config["threshold"])


def reference_periods(champion_periods: list[int] | None, available: list[int], period: int) -> list[int]:
    """The periods a new period's drift is measured against.

    The champion's training periods when there is a champion (drift that matters is drift from
    what the model in production learnt); before the first champion, the latest curated period
    before ``period``; nothing for the very first period.
    """
    if champion_periods is not None:
        return list(champion_periods)
    return [p for p in available if p < period][-1:]


# Salts the row hash of the drift sample: it must not follow the holdout split, which hashes the same ids.
_SAMPLE_HASH_KEY = "driftwheel-drift"  # pandas takes a 16-character key


def sample_rows(frame: pd.DataFrame, max_rows: int, key: str) -> pd.DataFrame:
    """``frame`` itself if it has at most ``max_rows`` rows; else a uniform sample of ``max_rows`` rows.

    The sample is the rows whose ``key`` (the id) hashes lowest, in ``frame``'s order: it depends
    on what the rows hold, never on where they sit, so a rerun compares the same rows. Why a
    sample is enough is in docs/benchmark/scale.md (the tests' power at that size).
    """
    if len(frame) <= max_rows:
        return frame
    hashes = pd.util.hash_pandas_object(frame[key].astype(str), index=False, hash_key=_SAMPLE_HASH_KEY).to_numpy()
    chosen = np.sort(np.argpartition(hashes, max_rows - 1)[:max_rows])
    return frame.iloc[chosen].reset_index(drop=True)


def drift_report(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    features: tuple[str, ...],
    target: str,
    out_dir: Path,
) -> DriftResult:
    """Run the drift report of ``current`` against ``reference``; save it as HTML and JSON in ``out_dir``.

    Only ``features`` and ``target`` are compared: ids, names and row order are not data to drift on.
    """
    # Evidently takes seconds to import: only a drift report pays for it.
    from evidently import Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    columns = [f for f in features if f in current.columns and f in reference.columns]
    report = Report([DataDriftPreset(columns=columns), ValueDrift(column=target)])
    snapshot = report.run(current[[*columns, target]], reference[[*columns, target]])
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out_dir / "drift_report.html", out_dir / "drift_report.json"
    store.write_atomic(html_path, lambda tmp: snapshot.save_html(str(tmp)))
    store.write_atomic(json_path, lambda tmp: snapshot.save_json(str(tmp)))

    scores: dict[str, float] = {}
    drifted: dict[str, bool] = {}
    for metric in snapshot.dict()["metrics"]:
        if metric["config"].get("type", "").endswith(":ValueDrift"):
            column = metric["config"]["column"]
            scores[column] = float(metric["value"])
            drifted[column] = _is_drifted(metric)
    feature_flags = [drifted[c] for c in columns]
    result = DriftResult(
        drift_share=sum(feature_flags) / len(feature_flags) if feature_flags else 0.0,
        drifted_columns=sum(feature_flags),
        column_scores={c: scores[c] for c in columns},
        column_drifted={c: drifted[c] for c in columns},
        target_drift_score=scores[target],
        target_drifted=drifted[target],
        html_path=html_path,
        json_path=json_path,
    )
    logger.info(
        "drift: %d of %d features drifted (%s); target %s (score %.3f); report %s",
        result.drifted_columns,
        len(columns),
        ", ".join(c for c in columns if drifted[c]) or "none",
        "drifted" if result.target_drifted else "stable",
        result.target_drift_score,
        html_path,
    )
    return result
