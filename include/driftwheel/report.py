"""What the flywheel did, period by period: one MLflow run per period, and the table built from them.

The period run is found by its ``flywheel.period`` tag, so a rerun of a period logs into the same
run instead of adding another. The per-year table of ``make demo`` is read back from these runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

T_PERIOD = "flywheel.period"
T_DECISION = "flywheel.decision"
T_DECISION_REASON = "flywheel.decision_reason"
T_TARGET_DRIFTED = "flywheel.target_drifted"
T_CHALLENGER = "flywheel.challenger_version"
T_GATE = "flywheel.gate"
T_GATE_REASON = "flywheel.gate_reason"
T_GATE_RULE = "flywheel.gate_rule"
T_DECISION_RULE = "flywheel.decision_rule"
T_PROMOTED = "flywheel.promoted"
T_CHAMPION = "flywheel.champion_version"
T_DRIFT_REPORT = "flywheel.drift_report"
# Outcome tags are cleared when a period is processed again, so a rerun cannot mix two outcomes.
OUTCOME_TAGS = (
    T_DECISION,
    T_DECISION_REASON,
    T_DECISION_RULE,
    T_CHALLENGER,
    T_GATE,
    T_GATE_REASON,
    T_GATE_RULE,
    T_PROMOTED,
    T_CHAMPION,
)


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created on first use."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def find_period_run(client: MlflowClient, experiment: str, period: int) -> str | None:
    """The run id of ``period``'s run in ``experiment``, or None if the period has none yet."""
    runs = client.search_runs(
        [experiment], filter_string=f"tags.`{T_PERIOD}` = '{period}'", order_by=["attributes.start_time ASC"]
    )
    return str(runs[0].info.run_id) if runs else None


def period_run(client: MlflowClient, experiment: str, period: int, tags: Mapping[str, str] | None = None) -> str:
    """The run id of ``period``'s run in ``experiment``, created on first use, outcome tags cleared."""
    runs = client.search_runs(
        [experiment], filter_string=f"tags.`{T_PERIOD}` = '{period}'", order_by=["attributes.start_time ASC"]
    )
    if runs:
        run_id = runs[0].info.run_id
        for key in OUTCOME_TAGS:
            if key in runs[0].data.tags:
                client.delete_tag(run_id, key)
        if runs[0].info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(experiment, run_name=f"period-{period}", tags={T_PERIOD: str(period)}).info.run_id
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    return run_id


def record(
    client: MlflowClient,
    run_id: str,
    *,
    metrics: Mapping[str, float | None] | None = None,
    tags: Mapping[str, object] | None = None,
) -> None:
    """Log metrics (``None`` values skipped) and tags on a period run."""
    for key, value in (metrics or {}).items():
        if value is not None:
            client.log_metric(run_id, key, float(value))
    for key, tag in (tags or {}).items():
        if tag is not None:
            client.set_tag(run_id, key, str(tag))


@dataclass(frozen=True)
class PeriodRow:
    year: int
    rows: int | None
    drift_share: float | None
    target_drift: float | None
    target_drifted: bool | None
    production_rmse: float | None
    decision: str
    challenger_rmse: float | None
    promoted: bool
    champion_version: str | None
    status: str
    # The gate's paired comparison: challenger RMSE minus the champion's (else the baseline's),
    # with its bounds; which rule decided the retrain.
    gate_difference: tuple[float, float, float] | None = None
    decision_rule: str | None = None


def period_table(client: MlflowClient, experiment: str) -> list[PeriodRow]:
    """One row per period run of ``experiment``, in period order."""
    rows: list[PeriodRow] = []
    for run in client.search_runs([experiment], max_results=10_000):
        tags, metrics = run.data.tags, run.data.metrics
        if T_PERIOD not in tags:
            continue
        drifted = tags.get(T_TARGET_DRIFTED)
        rows.append(
            PeriodRow(
                year=int(tags[T_PERIOD]),
                rows=int(metrics["rows"]) if "rows" in metrics else None,
                drift_share=metrics.get("drift_share"),
                target_drift=metrics.get("target_drift_score"),
                target_drifted=None if drifted is None else drifted == "True",
                production_rmse=metrics.get("production_rmse"),
                decision=tags.get(T_DECISION, "-"),
                challenger_rmse=metrics.get("challenger_rmse") if tags.get(T_CHALLENGER) else None,
                promoted=tags.get(T_PROMOTED) == "True",
                champion_version=tags.get(T_CHAMPION),
                status=run.info.status,
                gate_difference=_gate_difference(metrics) if tags.get(T_CHALLENGER) else None,
                decision_rule=tags.get(T_DECISION_RULE),
            )
        )
    return sorted(rows, key=lambda r: r.year)


def _gate_difference(metrics: Mapping[str, float]) -> tuple[float, float, float] | None:
    for name in ("vs_champion", "vs_baseline"):
        if all(k in metrics for k in (name, f"{name}_low", f"{name}_high")):
            return metrics[name], metrics[f"{name}_low"], metrics[f"{name}_high"]
    return None


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: list[PeriodRow]) -> str:
    """The per-year table as Markdown (readable in a terminal and pasteable into the README).

    "target drift" is the normed Wasserstein distance of the label against the reference window
    (``*``: at or above the drift threshold); "decision (rule)" names the rule that fired; "gate
    ΔRMSE [bounds]" is the challenger's held-out RMSE minus the champion's (the baseline's for a
    first model), with the paired-bootstrap bounds the gate decided on (< 0: challenger better).
    """
    header = [
        "year",
        "rows",
        "drift share",
        "target drift",
        "prod RMSE",
        "decision (rule)",
        "challenger RMSE",
        "gate ΔRMSE [bounds]",
        "promoted",
        "champion",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        target = "-" if r.target_drift is None else f"{r.target_drift:.2f}{' *' if r.target_drifted else ''}"
        cells = [
            str(r.year),
            "-" if r.rows is None else str(r.rows),
            _num(r.drift_share),
            target,
            _num(r.production_rmse),
            f"{r.decision} ({r.decision_rule})" if r.decision_rule else r.decision,
            _num(r.challenger_rmse),
            "-" if r.gate_difference is None else "{:+.2f} [{:+.2f}, {:+.2f}]".format(*r.gate_difference),
            "yes" if r.promoted else "no",
            f"v{r.champion_version}" if r.champion_version else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
