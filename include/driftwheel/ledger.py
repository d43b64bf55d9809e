"""The champion's ledger: every promotion, refusal, rejection and rollback, appended, never rewritten.

Each entry is a finished MLflow run of its own in the ledger experiment (``<experiment>-ledger``),
so it lives wherever the registry lives, every task and tool that reaches the registry can append
to it, the MLflow UI lists it, and a rerun of a period adds entries instead of editing old ones.
Entries that change the champion are appended under the promotion lock, so their order is the
order in which the champion changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from mlflow.tracking import MlflowClient

from driftwheel.report import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

logger = logging.getLogger(__name__)

Action = Literal["promote", "refused", "reject", "rollback"]
_PREFIX = "ledger."


@dataclass(frozen=True)
class Entry:
    action: Action
    model: str
    period: int | None
    from_version: str | None  # the champion before
    to_version: str | None  # the version promoted, refused, rejected or restored
    reason: str
    period_run_id: str | None = None  # the MLflow run of the period that made the decision
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    time: datetime | None = None  # set when read back


def experiment_name(flywheel_experiment: str) -> str:
    return f"{flywheel_experiment}-ledger"


def _experiment_id(client: MlflowClient, name: str, create: bool) -> str | None:
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    if not create:
        return None
    try:
        return str(client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}))
    except Exception:  # created concurrently by another writer
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return str(existing.experiment_id)


def append(client: MlflowClient, experiment: str, entry: Entry) -> str:
    """Append ``entry`` to the ledger experiment named ``experiment``; return its run id."""
    tags = {
        f"{_PREFIX}action": entry.action,
        f"{_PREFIX}model": entry.model,
        f"{_PREFIX}period": "" if entry.period is None else str(entry.period),
        f"{_PREFIX}from_version": entry.from_version or "",
        f"{_PREFIX}to_version": entry.to_version or "",
        f"{_PREFIX}reason": entry.reason[:5000],
        f"{_PREFIX}period_run_id": entry.period_run_id or "",
        # Finer than the run's start time (milliseconds): the order of entries written back to back.
        f"{_PREFIX}written_ns": str(time.time_ns()),
    }
    experiment_id = _experiment_id(client, experiment, create=True)
    assert experiment_id is not None
    name = f"{entry.action}-{entry.period or 'manual'}-v{entry.to_version or 'none'}"
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    for key, value in entry.metrics.items():
        if value is not None:
            client.log_metric(run.info.run_id, key, float(value))
    client.set_terminated(run.info.run_id, "FINISHED")
    logger.info(
        "ledger: %s %s %s -> %s (%s)", entry.action, entry.model, entry.from_version, entry.to_version, entry.reason
    )
    return str(run.info.run_id)


def entries(client: MlflowClient, experiment: str, model: str | None = None) -> list[Entry]:
    """Every entry of the ledger (of ``model``, if given), oldest first."""
    experiment_id = _experiment_id(client, experiment, create=False)
    if experiment_id is None:
        return []
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{_PREFIX}model` = '{model}'" if model else "",
        order_by=["attributes.start_time ASC"],
        max_results=50_000,
    )
    out = []
    for run in sorted(runs, key=lambda r: int(r.data.tags.get(f"{_PREFIX}written_ns", "0"))):
        tags = run.data.tags
        out.append(
            Entry(
                action=tags[f"{_PREFIX}action"],  # type: ignore[arg-type]
                model=tags[f"{_PREFIX}model"],
                period=int(tags[f"{_PREFIX}period"]) if tags.get(f"{_PREFIX}period") else None,
                from_version=tags.get(f"{_PREFIX}from_version") or None,
                to_version=tags.get(f"{_PREFIX}to_version") or None,
                reason=tags.get(f"{_PREFIX}reason", ""),
                period_run_id=tags.get(f"{_PREFIX}period_run_id") or None,
                metrics=dict(run.data.metrics),
                time=datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC),
            )
        )
    return out


def format_entries(items: list[Entry]) -> str:
    """The ledger as a Markdown table, oldest first."""
    lines = ["| time (UTC) | action | period | from | to | reason |", "|---|---|---|---|---|---|"]
    for e in items:
        when = e.time.strftime("%Y-%m-%d %H:%M:%S") if e.time else "-"
        version = lambda v: f"v{v}" if v else "-"  # noqa: E731
        lines.append(
            f"| {when} | {e.action} | {e.period or '-'} | {version(e.from_version)} | {version(e.to_version)} "
            f"| {e.reason.replace('|', '/')} |"
        )
    return "\n".join(lines)
