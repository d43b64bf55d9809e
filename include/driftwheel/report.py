"""What the flywheel did, period by period: one MLflow run per period, and the table built from them.

The period run is found by its ``flywheel.period`` tag, so a rerun of a period logs into the same
run instead of adding another. The per-year table of ``make demo`` and the timeline
(``python -m driftwheel report``, the plugin's ``/flywheel/timeline`` page) are read back from these runs.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from driftwheel import store

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


# MLflow 3's UI opens an experiment on its GenAI traces page unless the experiment's kind tag says
# it holds training runs (the UI's ExperimentKind.CUSTOM_MODEL_DEVELOPMENT; mlflow 3.17 has no Python
# constant for either, tests/test_report.py checks them against the installed UI).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created on first use and tagged as one of training runs."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made before the tag existed
            client.set_experiment_tag(existing.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return existing.experiment_id
    return client.create_experiment(
        name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
    )


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
    """What one period's MLflow run recorded. RMSEs are on the period's labels; ``None`` = not measured."""

    year: int
    rows: int | None
    drift_share: float | None
    target_drift: float | None
    target_drifted: bool | None
    production_rmse: float | None  # the run's champion on the whole period, before retraining
    baseline_rmse: float | None  # the previous period's mean label on the whole period
    decision: str
    challenger_rmse: float | None  # on the held-out split the gate scores
    heldout_rows: int | None
    gate: str | None  # "passed" / "rejected" / None (no challenger was judged)
    promoted: bool
    champion_version: str | None  # the champion after the period (a promotion moves it)
    status: str
    # The gate's paired comparison: challenger RMSE minus the champion's (else the baseline's),
    # with its bounds; which rule decided the retrain.
    gate_difference: tuple[float, float, float] | None = None
    decision_rule: str | None = None

    @property
    def outcome(self) -> str:
        """What the period did to the champion: promote, reject, skip, failed, retrain (no verdict yet) or -."""
        if self.status == "FAILED":
            return "failed"
        if self.decision == "skip":
            return "skip"
        if self.decision == "retrain":
            if self.promoted:
                return "promote"
            return "reject" if self.gate == "rejected" else "retrain"
        return "-"


def _metric_int(metrics: Mapping[str, float], key: str) -> int | None:
    return int(metrics[key]) if key in metrics else None


def period_table(client: MlflowClient, experiment: str) -> list[PeriodRow]:
    """One row per period run of ``experiment``, in period order."""
    rows: list[PeriodRow] = []
    for run in client.search_runs([experiment], max_results=10_000):
        tags, metrics = run.data.tags, run.data.metrics
        if T_PERIOD not in tags:
            continue
        drifted = tags.get(T_TARGET_DRIFTED)
        judged = bool(tags.get(T_CHALLENGER))  # gate metrics of an earlier attempt are stale without it
        rows.append(
            PeriodRow(
                year=int(tags[T_PERIOD]),
                rows=_metric_int(metrics, "rows"),
                drift_share=metrics.get("drift_share"),
                target_drift=metrics.get("target_drift_score"),
                target_drifted=None if drifted is None else drifted == "True",
                production_rmse=metrics.get("production_rmse"),
                baseline_rmse=metrics.get("baseline_production_rmse"),
                decision=tags.get(T_DECISION, "-"),
                challenger_rmse=metrics.get("challenger_rmse") if judged else None,
                heldout_rows=_metric_int(metrics, "holdout_rows") if judged else None,
                gate=tags.get(T_GATE) if judged else None,
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


def _target_drift(row: PeriodRow) -> str:
    return "-" if row.target_drift is None else f"{row.target_drift:.2f}{' *' if row.target_drifted else ''}"


def _decision(row: PeriodRow) -> str:
    return f"{row.decision} ({row.decision_rule})" if row.decision_rule else row.decision


def _gate_cell(row: PeriodRow) -> str:
    return "-" if row.gate_difference is None else "{:+.2f} [{:+.2f}, {:+.2f}]".format(*row.gate_difference)


@dataclass(frozen=True)
class Column:
    """One column of the per-year table: its header, what it means (the legend) and its cell."""

    header: str
    meaning: str
    cell: Callable[[PeriodRow], str]


# The per-year table, in order. A new column is one entry here; the legend follows.
COLUMNS: tuple[Column, ...] = (
    Column("year", "the period (one DAG run, one MLflow run `period-<year>`)", lambda r: str(r.year)),
    Column("rows", "tracks of the year that passed validation", lambda r: "-" if r.rows is None else str(r.rows)),
    Column(
        "drift share",
        "share of features whose drift distance to the reference window (the last labelled years) is at or above "
        "the threshold (normed Wasserstein for numbers, Jensen-Shannon for categories)",
        lambda r: _num(r.drift_share),
    ),
    Column(
        "target drift",
        "normed Wasserstein distance of the label to the reference window, the same test at every size "
        "(larger = more drift); * = at or above the drift threshold",
        _target_drift,
    ),
    Column(
        "prod RMSE",
        "the champion in production on the whole year, scored before its labels are used",
        lambda r: _num(r.production_rmse),
    ),
    Column(
        "baseline RMSE",
        "last year's mean popularity as the prediction, on the same rows as prod RMSE",
        lambda r: _num(r.baseline_rmse),
    ),
    Column(
        "decision (rule)",
        "retrain or skip, and the rule of the drift policy that fired (numbers on the MLflow run)",
        _decision,
    ),
    Column(
        "challenger RMSE",
        "the model retrained this year, on the year's held-out split the gate judges",
        lambda r: _num(r.challenger_rmse),
    ),
    Column(
        "held-out n", "rows in that held-out split", lambda r: "-" if r.heldout_rows is None else str(r.heldout_rows)
    ),
    Column(
        "gate ΔRMSE [bounds]",
        "challenger's held-out RMSE minus the champion's (the baseline's for a first model), with the paired "
        "bootstrap bounds the gate decided on (< 0: the challenger is better)",
        _gate_cell,
    ),
    Column(
        "promoted",
        "whether the challenger passed the gate and became champion",
        lambda r: "yes" if r.promoted else "no",
    ),
    Column(
        "champion",
        "the registered model version in production after the year",
        lambda r: f"v{r.champion_version}" if r.champion_version else "-",
    ),
)


def format_table(rows: list[PeriodRow], columns: tuple[Column, ...] = COLUMNS) -> str:
    """The per-year table as Markdown (readable in a terminal and pasteable into the README)."""
    lines = ["| " + " | ".join(c.header for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.cell(r) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def format_legend(columns: tuple[Column, ...] = COLUMNS) -> str:
    """What each column of :func:`format_table` is, one line per column."""
    return "\n".join(f"- {c.header}: {c.meaning}" for c in columns)


# -- the timeline ------------------------------------------------------------------------------------
# Matplotlib, not plotly: it is installed already (MLflow depends on it), and a static PNG needs no
# JavaScript bundle or CDN, so the same picture works in the README, in an offline HTML file and
# inside the Airflow UI's iframe.
OUTCOME_STYLE: dict[str, tuple[str, str]] = {  # outcome -> (matplotlib marker, colour)
    "promote": ("^", "#2ca02c"),
    "reject": ("X", "#d62728"),
    "retrain": ("o", "#ff7f0e"),
    "skip": ("o", "#b0b0b0"),
    "failed": ("s", "#000000"),
}


def timeline_png(rows: list[PeriodRow], title: str = "driftwheel") -> bytes:
    """The timeline as a PNG: errors and outcome markers above, drift below, one x tick per period."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A Figure with its own canvas, not pyplot: no process-global figure state, no GUI backend.
    fig = Figure(figsize=(12, 6.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    errors, drifts = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    years = [r.year for r in rows]

    def series(values: list[float | None]) -> list[float]:
        return [float("nan") if v is None else v for v in values]

    errors.plot(years, series([r.production_rmse for r in rows]), "-o", color="#1f77b4", label="champion in production")
    errors.plot(
        years, series([r.baseline_rmse for r in rows]), "--", color="#7f7f7f", label="baseline (last year's mean)"
    )
    for outcome, (marker, colour) in OUTCOME_STYLE.items():
        picked = [r for r in rows if r.outcome == outcome and r.challenger_rmse is not None]
        if picked:
            errors.scatter(
                [r.year for r in picked],
                [r.challenger_rmse for r in picked],
                marker=marker,
                s=80,
                color=colour,
                zorder=3,
                label=f"challenger (held-out): {outcome}",
            )
    low, high = errors.get_ylim()
    errors.set_ylim(low, high + (high - low) * 0.2)  # room for the outcome labels above the lines
    for r in rows:  # the outcome and the champion after the period, written over each year
        label = r.outcome if not r.champion_version else f"{r.outcome}\nv{r.champion_version}"
        errors.annotate(
            label,
            (r.year, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, -4),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=8,
            color=OUTCOME_STYLE.get(r.outcome, ("", "#444444"))[1],
        )
    errors.set_ylabel("RMSE (popularity points)")
    errors.set_title(f"{title}: is the champion keeping up?")
    errors.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    errors.grid(alpha=0.3)

    drifts.bar(years, series([r.drift_share for r in rows]), color="#9467bd", alpha=0.6, label="drift share (features)")
    drifts.plot(
        years, series([r.target_drift for r in rows]), "-s", color="#8c564b", markersize=4, label="target drift score"
    )
    drifts.set_ylabel("drift")
    drifts.set_xticks(years, [str(y) for y in years], rotation=45 if len(years) > 14 else 0)
    drifts.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    drifts.grid(alpha=0.3)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def timeline_html(rows: list[PeriodRow], png: bytes, title: str = "driftwheel", highlight: int | None = None) -> str:
    """A self-contained page: the PNG inline, the per-year table (``highlight``'s row marked), the legend."""
    esc = html.escape
    head = "".join(f"<th>{esc(c.header)}</th>" for c in COLUMNS) + "<th>outcome</th>"
    body = []
    for r in rows:
        marked = ' class="highlight"' if r.year == highlight else ""
        cells = "".join(f"<td>{esc(c.cell(r))}</td>" for c in COLUMNS)
        body.append(f'<tr id="year-{r.year}"{marked}>{cells}<td class="outcome {r.outcome}">{esc(r.outcome)}</td></tr>')
    legend = "".join(f"<dt>{esc(c.header)}</dt><dd>{esc(c.meaning)}</dd>" for c in COLUMNS)
    legend += (
        "<dt>outcome</dt><dd>promote: the challenger became champion; reject: the gate refused it; "
        "skip: no retraining; failed: the year's run failed</dd>"
    )
    image = base64.b64encode(png).decode("ascii")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}: timeline</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1rem 2rem; color: #222; }}
img {{ max-width: 100%; }}
table {{ border-collapse: collapse; font-size: 0.85rem; }}
th, td {{ border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: right; }}
tr.highlight {{ background: #fff3c4; }}
.promote {{ color: #2ca02c; }} .reject {{ color: #d62728; }} .failed {{ font-weight: bold; }}
dl {{ font-size: 0.8rem; display: grid; grid-template-columns: max-content auto; gap: 0.1rem 1rem; }}
dt {{ font-weight: bold; }} dd {{ margin: 0; }}
</style></head>
<body>
<h1>{esc(title)}: the flywheel over time</h1>
<img id="timeline" alt="timeline of {esc(title)}: production, baseline and challenger RMSE per year, with drift" src="data:image/png;base64,{image}">
<table id="periods"><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
<dl id="legend">{legend}</dl>
</body></html>
"""


def write_timeline(rows: list[PeriodRow], reports_dir: Path, title: str = "driftwheel") -> tuple[Path, Path]:
    """Write ``timeline.html`` and ``timeline.png`` into ``reports_dir`` atomically; returns both paths."""
    png = timeline_png(rows, title)
    html_path, png_path = reports_dir / "timeline.html", reports_dir / "timeline.png"
    store.write_atomic(png_path, lambda tmp: tmp.write_bytes(png))
    store.write_text(html_path, timeline_html(rows, png, title))
    return html_path, png_path
