"""Drift of a new period against a fixed window of earlier periods, with Evidently 0.7.

The reference is the last ``DriftPolicy.reference_window`` labelled periods before the new one,
whatever the champion was trained on, so a drift score means the same in every period.
Each column's test is chosen here, by column type, not by Evidently's size-dependent default
(a K-S p-value below 1,000 reference rows, where small = drift, a distance above, where large =
drift): numeric columns and the target use the normed Wasserstein distance, categorical ones the
Jensen-Shannon distance (``DriftPolicy.numeric_method`` / ``categorical_method``). Every score is
a distance: larger = more drift, at every sample size; drift at >= ``DriftPolicy.drift_threshold``.
The HTML and JSON reports are written atomically under the period's folder, named with the period
and the reference; the caller logs them to MLflow.
"""

from __future__ import annotations

import hashlib
import html as html_lib
import json
import logging
import math
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftwheel import store
from driftwheel.config import DriftPolicy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftResult:
    drift_share: float
    drifted_columns: int
    column_scores: dict[str, float]
    column_drifted: dict[str, bool]
    target_drift_score: float
    target_drifted: bool
    # The stattest of each column, the target's included (the name Evidently records).
    methods: dict[str, str]
    html_path: Path
    json_path: Path


def _is_drifted(metric: dict[str, Any]) -> bool:
    # Every configured method is a distance: drift at or above the threshold.
    return float(metric["value"]) >= float(metric["config"]["threshold"])


def reference_periods(available: list[int], period: int, window: int) -> list[int]:
    """The periods a new period's drift is measured against: the last ``window`` curated periods
    before ``period`` (fewer at the start of the data; nothing for the very first period)."""
    return [p for p in available if p < period][-window:]


def reference_label(periods: list[int]) -> str:
    """``2012-2014`` for a run of periods, ``2012,2014`` otherwise."""
    if len(periods) > 1 and periods == list(range(periods[0], periods[-1] + 1)):
        return f"{periods[0]}-{periods[-1]}"
    return ",".join(map(str, periods))


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


def sample_pooled(frames: Iterable[pd.DataFrame], max_rows: int, key: str) -> pd.DataFrame:
    """``sample_rows`` of the frames' concatenation (index reset), holding one frame at a time.

    The pooled sample's rows are among each frame's own sample (a row among the lowest hashes of
    the pool is among the lowest of its frame), so sampling each frame first, then the union, gives
    the same rows in the same order.
    """
    parts = [sample_rows(frame, max_rows, key) for frame in frames]
    if not parts:
        raise ValueError("no frames to sample")
    return sample_rows(pd.concat(parts, ignore_index=True), max_rows, key)


def drift_report(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    features: tuple[str, ...],
    target: str,
    out_dir: Path,
    policy: DriftPolicy,
    *,
    period: int,
    reference_periods: list[int],
) -> DriftResult:
    """Run the drift report of ``current`` (``period``) against ``reference`` (``reference_periods``);
    save it as HTML and JSON in ``out_dir``, named ``drift_<period>_vs_<reference>``.

    Only ``features`` and ``target`` are compared: ids, names and row order are not data to drift on.
    """
    # Evidently takes seconds to import: only a drift report pays for it.
    from evidently import Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    columns = [f for f in features if f in current.columns and f in reference.columns]
    label = reference_label(reference_periods)
    # The report's "Dataset Drift is detected" verdict uses the decision's own share.
    drift_share = policy.max_drift_share if math.isfinite(policy.max_drift_share) else 1.0
    report = Report(
        [
            DataDriftPreset(
                columns=columns,
                drift_share=drift_share,
                num_method=policy.numeric_method,
                cat_method=policy.categorical_method,
                threshold=policy.drift_threshold,
            ),
            ValueDrift(column=target, method=policy.numeric_method, threshold=policy.drift_threshold),
        ]
    )
    # Everything the report above is built from (the cache's key, with the data and the title).
    config = {
        "columns": columns,
        "target": target,
        "drift_share": drift_share,
        "methods": [policy.numeric_method, policy.categorical_method],
        "threshold": policy.drift_threshold,
    }
    title = (
        f"Drift of {period} ({len(current)} rows) against {label} ({len(reference)} rows): "
        f"{policy.numeric_method} (numeric, target), {policy.categorical_method} (categorical), "
        f"drift at >= {policy.drift_threshold:g}"
    )
    current_data = _distribution_order(current[[*columns, target]], target)
    reference_data = _distribution_order(reference[[*columns, target]], target)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"drift_{period}_vs_{label.replace(',', '_')}"
    html_path, json_path = out_dir / f"{stem}.html", out_dir / f"{stem}.json"
    cached = _cached_report(policy, config, title, current_data, reference_data)
    if cached is not None and cached[0].is_file() and cached[1].is_file():
        store.write_atomic(html_path, lambda tmp: shutil.copyfile(cached[0], tmp))
        store.write_atomic(json_path, lambda tmp: shutil.copyfile(cached[1], tmp))
    else:
        snapshot = report.run(current_data, reference_data, name=title)
        store.write_text(html_path, _titled(snapshot.get_html_str(as_iframe=False), title, target))
        store.write_atomic(json_path, lambda tmp: snapshot.save_json(str(tmp)))
        if cached is not None:  # the JSON last: a report is found only once both files are there
            store.write_atomic(cached[0], lambda tmp: shutil.copyfile(html_path, tmp))
            store.write_atomic(cached[1], lambda tmp: shutil.copyfile(json_path, tmp))
    # A rerun against another reference replaces the period's report instead of adding one.
    for stale in [*out_dir.glob("drift_*.html"), *out_dir.glob("drift_*.json")]:
        if stale not in (html_path, json_path):
            stale.unlink(missing_ok=True)

    scores: dict[str, float] = {}
    drifted: dict[str, bool] = {}
    methods: dict[str, str] = {}
    # Read back from the saved JSON, computed or reused alike: both give the same numbers.
    for metric in json.loads(json_path.read_text(encoding="utf-8"))["metrics"]:
        if metric["config"].get("type", "").endswith(":ValueDrift"):
            column = metric["config"]["column"]
            scores[column] = float(metric["value"])
            drifted[column] = _is_drifted(metric)
            methods[column] = str(metric["config"]["method"])
    feature_flags = [drifted[c] for c in columns]
    result = DriftResult(
        drift_share=sum(feature_flags) / len(feature_flags) if feature_flags else 0.0,
        drifted_columns=sum(feature_flags),
        column_scores={c: scores[c] for c in columns},
        column_drifted={c: drifted[c] for c in columns},
        target_drift_score=scores[target],
        target_drifted=drifted[target],
        methods=methods,
        html_path=html_path,
        json_path=json_path,
    )
    logger.info(
        "drift of %s against %s: %d of %d features drifted (%s); target %s (score %.3f); report %s",
        period,
        label,
        result.drifted_columns,
        len(columns),
        ", ".join(c for c in columns if drifted[c]) or "none",
        "drifted" if result.target_drifted else "stable",
        result.target_drift_score,
        html_path,
    )
    return result


def _cached_report(
    policy: DriftPolicy, config: dict[str, Any], title: str, current: pd.DataFrame, reference: pd.DataFrame
) -> tuple[Path, Path] | None:
    """Where the report of these inputs is (or goes) in ``policy.report_cache_dir``: its HTML and
    JSON paths; None without a cache.

    The name is a hash of everything the report reads: both frames' values, columns and dtypes,
    the report's configuration (columns, tests, thresholds, drift share) and its title.
    """
    if policy.report_cache_dir is None:
        return None
    digest = hashlib.sha256()
    for frame in (current, reference):
        digest.update(json.dumps([list(map(str, frame.columns)), list(map(str, frame.dtypes))]).encode())
        digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    digest.update(json.dumps(config, sort_keys=True).encode())
    digest.update(title.encode())
    key = digest.hexdigest()[:32]
    return policy.report_cache_dir / f"{key}.html", policy.report_cache_dir / f"{key}.json"


def _distribution_order(frame: pd.DataFrame, target: str) -> pd.DataFrame:
    """``frame`` sorted by the target, index reset.

    Evidently plots a numeric column's "drift" tab against the row index ("Index binned"); sorted
    by value, that plot reads as the period's quantiles against the reference band, a view of the
    distribution. Row order carries no meaning here, and no test depends on it.
    """
    return frame.sort_values(target, kind="stable").reset_index(drop=True)


def _titled(html: str, title: str, target: str) -> str:
    """Evidently's HTML with ``title`` as its page title and heading (Evidently shows neither the
    period nor the reference), and the row axis named for what it is after :func:`_distribution_order`."""
    escaped = html_lib.escape(title)
    html = html.replace("<head>", f"<head><title>{escaped}</title>", 1)
    html = html.replace("<body>", f'<body><h2 style="font-family: sans-serif; margin: 16px">{escaped}</h2>', 1)
    return html.replace('"Index binned"', json.dumps(f"rows in {target} order (binned)"))
