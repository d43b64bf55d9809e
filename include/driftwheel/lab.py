"""The drift lab: every retrain policy on every drift scenario, through the flywheel's own steps.

A cell of the matrix is one policy (:mod:`driftwheel.policies`) replayed over the years of one
scenario (:mod:`driftwheel.scenarios`) with :func:`driftwheel.replay.replay`: the DAG's steps in
the DAG's order, in a state directory of its own (its own landing data, curated partitions and
SQLite MLflow store). A period is scored by the champion's production RMSE, taken by the drift
step on the whole period before anything is trained on its labels (prequential evaluation).

This module runs cells and summarizes them; the command (``python -m driftwheel lab``,
:mod:`driftwheel_ops.lab_command`) runs scenarios in parallel and writes the files.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from driftwheel.config import Settings, SyntheticConfig
from driftwheel.policies import POLICIES
from driftwheel.replay import PeriodOutcome, replay
from driftwheel.scenarios import PRESETS, load_scenario

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabYears:
    """The years every cell replays: a warm-up pooled into the first model, then scored years."""

    first: int = 2013
    warmup_end: int = 2014
    last: int = 2020

    def __post_init__(self) -> None:
        if not self.first <= self.warmup_end < self.last:
            raise ValueError(f"need first <= warmup_end < last, got {self.first}, {self.warmup_end}, {self.last}")

    @property
    def replayed(self) -> list[int]:
        return list(range(self.first, self.last + 1))

    @property
    def scored(self) -> list[int]:
        """The years after the warm-up: each is scored by a champion trained without its labels."""
        return list(range(self.warmup_end + 1, self.last + 1))


@dataclass(frozen=True)
class PeriodResult:
    period: int
    production_rmse: float | None
    decision: str
    retrained: bool
    promoted: bool
    retrain_seconds: float | None  # wall time of the retrain step, MLflow logging included

    @property
    def rejected(self) -> bool:
        return self.retrained and not self.promoted


@dataclass
class CellResult:
    """One policy replayed over one scenario."""

    scenario: str
    policy: str
    periods: list[PeriodResult] = field(default_factory=list)
    seconds: float = 0.0
    # CPU time of the cell's process: what the cell costs on an idle machine, whatever else runs.
    cpu_seconds: float = 0.0


def detection_delay(change_year: int | None, retrain_periods: Iterable[int]) -> int | None:
    """Periods from the scenario's change to the first retrain on a period at or after it.

    0 means the model was retrained on the change's first period itself (so the next period is
    scored by a model that has seen the change). None when there is no change or no retrain on
    or after it. Retrains before the change do not count: they cannot have detected it.
    """
    if change_year is None:
        return None
    after = [p for p in retrain_periods if p >= change_year]
    return min(after) - change_year if after else None


def slug(scenario: str) -> str:
    """A scenario's name in file and MLflow names: the preset's name, or the scenario file's stem."""
    return Path(scenario).stem


def plot_name(scenario: str) -> str:
    return f"{slug(scenario)}.png"


def first_change(scenario_name: str, scored: Sequence[int]) -> int | None:
    """The first year a change of the scenario shows in the scored years; None for no change."""
    changes = [y for y in load_scenario(scenario_name).change_years if y >= scored[0]]
    return changes[0] if changes else None


def cell_settings(
    base: Settings, scenario: str, policy: str, years: LabYears, state_dir: Path, report_cache: Path | None = None
) -> Settings:
    """``base`` under ``policy``, generating ``scenario``'s data, in ``state_dir`` with its own MLflow store.

    ``report_cache``: a folder of drift reports shared by the cells (``DriftPolicy.report_cache_dir``):
    every policy of a scenario replays the same data, so its drift reports are computed once.
    """
    configure = POLICIES[policy].configure
    if configure is None:
        raise ValueError(f"policy {policy!r} trains no model: the lab replays retrain policies only")
    settings = dataclasses.replace(
        base,
        state_dir=state_dir,
        source="synthetic",
        mlflow_tracking_uri=None,  # a SQLite store in the cell's state directory
        lock_uri=None,
        experiment_name=f"lab-{slug(scenario)}-{policy}",
        model_name=f"lab_{slug(scenario)}_{policy}",
        synthetic=dataclasses.replace(base.synthetic, scenario=scenario),
        training=dataclasses.replace(base.training, warmup_start=years.first, warmup_end=years.warmup_end),
    )
    settings = configure(settings)
    if report_cache is None:
        return settings
    # After the policy: a policy may replace the whole drift policy (``never`` does).
    return dataclasses.replace(settings, drift=dataclasses.replace(settings.drift, report_cache_dir=report_cache))


def run_cell(
    base: Settings,
    scenario: str,
    policy: str,
    years: LabYears,
    state_root: Path,
    on_period: Callable[[PeriodOutcome], None] | None = None,
    empty_mlflow_db: Path | None = None,
    report_cache: Path | None = None,
) -> CellResult:
    """Replay ``years`` of ``scenario`` under ``policy`` from an empty state (``state_root/<scenario>/policy``).

    ``empty_mlflow_db``: a copy of an MLflow SQLite store with its tables created and nothing in
    them (:func:`make_empty_mlflow_db`) to start the cell's store from: creating the tables runs
    MLflow's migrations, seconds per cell that say nothing about a policy. ``report_cache``: see
    :func:`cell_settings`; a reused report is the same file as a computed one, so the cell's numbers
    do not depend on it.
    """
    state = state_root / slug(scenario) / policy
    shutil.rmtree(state, ignore_errors=True)  # a cell starts from nothing: no champion, no data
    settings = cell_settings(base, scenario, policy, years, state, report_cache)
    if empty_mlflow_db is not None:
        state.mkdir(parents=True)
        shutil.copyfile(empty_mlflow_db, state / "mlflow.db")
    result = CellResult(scenario, policy)

    def record(outcome: PeriodOutcome) -> None:
        retrained = outcome.challenger is not None and outcome.gate is not None
        promoted = outcome.promotion is not None and bool(outcome.promotion["promoted"])
        result.periods.append(
            PeriodResult(
                outcome.period,
                outcome.drift["production_rmse"],
                outcome.decision.action,
                retrained,
                promoted,
                outcome.retrain_seconds,
            )
        )
        if on_period is not None:
            on_period(outcome)

    started, cpu_started = time.perf_counter(), time.process_time()
    replay(settings, years.replayed, on_period=record)
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu_started
    return result


def make_empty_mlflow_db(path: Path) -> Path:
    """Create an MLflow SQLite store at ``path`` with its tables and nothing else; returns ``path``."""
    from driftwheel import registry

    path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    registry.connect(f"sqlite:///{path}").search_experiments()  # the first use creates the tables
    return path


def summarize_cell(cell: CellResult, years: LabYears) -> dict[str, Any]:
    """The matrix's numbers for one cell, over the scored years only (the warm-up's cold start is
    the same for every gated policy and says nothing about keeping up with a change)."""
    scored = [p for p in cell.periods if p.period in years.scored]
    rmse = [p.production_rmse for p in scored if p.production_rmse is not None]
    retrained = [p.period for p in scored if p.retrained]
    change = first_change(cell.scenario, years.scored)
    return {
        "per_period": {str(p.period): p.production_rmse for p in scored},
        "mean_production_rmse": float(np.mean(rmse)) if len(rmse) == len(years.scored) else None,
        "retrains": len(retrained),
        "promotions": sum(p.promoted for p in scored),
        "rejected": sum(p.rejected for p in scored),
        "retrain_seconds": float(sum(p.retrain_seconds or 0.0 for p in scored)),
        "detection_delay": detection_delay(change, retrained),
        "retrained": retrained,
        "promoted": [p.period for p in scored if p.promoted],
        "wall_seconds": cell.seconds,
        "cpu_seconds": cell.cpu_seconds,
    }


def summarize(cells: Iterable[CellResult], years: LabYears, rows_per_year: int) -> dict[str, Any]:
    """The whole matrix as plain data (the lab's JSON): per scenario its change and a summary per policy."""
    scenarios: dict[str, Any] = {}
    for cell in cells:
        scenario = load_scenario(cell.scenario)
        entry = scenarios.setdefault(
            cell.scenario,
            {
                "description": scenario.description,
                "change_year": first_change(cell.scenario, years.scored),
                "plot": plot_name(cell.scenario),
                "policies": {},
            },
        )
        entry["policies"][cell.policy] = summarize_cell(cell, years)
    order = list(PRESETS)
    ranked = sorted(scenarios, key=lambda s: (order.index(s) if s in order else len(order), s))
    return {
        "years": {"first": years.first, "warmup_end": years.warmup_end, "last": years.last, "scored": years.scored},
        "rows_per_year": rows_per_year,
        "policies": {name: POLICIES[name].description for name in _policies(scenarios)},
        "scenarios": {name: scenarios[name] for name in ranked},
    }


def _policies(scenarios: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for entry in scenarios.values():
        seen += [p for p in entry["policies"] if p not in seen]
    order = list(POLICIES)
    return sorted(seen, key=order.index)


def winners(entry: dict[str, Any], tolerance: float = 0.0) -> list[str]:
    """The policies of a scenario whose mean production RMSE is lowest (within ``tolerance``)."""
    means = {
        p: s["mean_production_rmse"] for p, s in entry["policies"].items() if s["mean_production_rmse"] is not None
    }
    if not means:
        return []
    best = min(means.values())
    return [p for p, m in means.items() if m <= best + tolerance]


def default_losses(summary: dict[str, Any], policy: str = "default") -> list[dict[str, Any]]:
    """The scenarios where ``policy`` is not the best, largest loss first: the scenario, the
    policy's mean production RMSE, the best policies and their mean, and the difference."""
    losses = []
    for name, entry in summary["scenarios"].items():
        mine = entry["policies"].get(policy, {}).get("mean_production_rmse")
        best = winners(entry)
        if mine is None or not best or policy in best:
            continue
        best_rmse = entry["policies"][best[0]]["mean_production_rmse"]
        losses.append({"scenario": name, "default": mine, "best": best, "best_rmse": best_rmse, "by": mine - best_rmse})
    return sorted(losses, key=lambda loss: -loss["by"])


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def matrix_markdown(summary: dict[str, Any], command: str) -> str:
    """The lab's Markdown: the RMSE matrix, the detection delays, then each scenario's details."""
    policies = list(summary["policies"])
    years = summary["years"]
    header = "| scenario | " + " | ".join(policies) + " |"
    rule = "|---|" + "---|" * len(policies)
    lines = [
        "# Drift lab: every retrain policy on every scenario",
        "",
        f"`{command}`",
        "",
        f"Synthetic source, {summary['rows_per_year']} tracks a year; warm-up {years['first']}-{years['warmup_end']} "
        f"(the first model), scored {years['scored'][0]}-{years['scored'][-1]}: each year by the champion of the "
        "year before, before its labels are seen. Each cell replays the flywheel's own steps "
        "(`driftwheel.replay`) from an empty state.",
        "",
        "## Mean production RMSE (lower is better; best of the row in bold)",
        "",
        header,
        rule,
    ]
    for name, entry in summary["scenarios"].items():
        best = set(winners(entry))
        cells = []
        for policy in policies:
            s = entry["policies"].get(policy)
            text = _fmt(s["mean_production_rmse"]) if s else ""
            cells.append(f"**{text}**" if policy in best else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Detection delay (periods from the change to the first retrain on or after it; - : never)",
        "",
        header.replace("| scenario |", "| scenario (change) |"),
        rule,
    ]
    for name, entry in summary["scenarios"].items():
        if entry["change_year"] is None:
            continue
        cells = [_delay(entry["policies"][p]["detection_delay"]) if p in entry["policies"] else "" for p in policies]
        lines.append(f"| {name} ({entry['change_year']}) | " + " | ".join(cells) + " |")
    losses = default_losses(summary)
    if losses:
        lines += [
            "",
            "## Where the default loses (its mean production RMSE minus the best policy's)",
            "",
            "| scenario | default | best | by | % |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {loss['scenario']} | {_fmt(loss['default'])} | {', '.join(loss['best'])} {_fmt(loss['best_rmse'])} | "
            f"{_fmt(loss['by'])} | {100 * loss['by'] / loss['best_rmse']:.1f} |"
            for loss in losses
        ]
    lines += ["", "## Per scenario", ""]
    for name, entry in summary["scenarios"].items():
        change = entry["change_year"]
        lines += [
            f"### {name}",
            "",
            f"{entry['description']}" + (f"; first change scored in {change}." if change else "."),
            "",
            "| policy | " + " | ".join(map(str, years["scored"])) + " | mean | retrains | promotions | "
            "rejected | retrain s | delay |",
            "|---|" + "---|" * (len(years["scored"]) + 6),
        ]
        for policy, s in entry["policies"].items():
            per = [_fmt(s["per_period"].get(str(y))) for y in years["scored"]]
            lines.append(
                f"| {policy} | " + " | ".join(per) + f" | {_fmt(s['mean_production_rmse'])} | {s['retrains']} | "
                f"{s['promotions']} | {s['rejected']} | {s['retrain_seconds']:.1f} | "
                f"{_delay(s['detection_delay']) if change else 'n/a'} |"
            )
        lines += ["", f"![{name}]({entry['plot']})", ""]
    lines += ["Policies:", ""]
    lines += [f"- `{name}`: {text}" for name, text in summary["policies"].items()]
    return "\n".join(lines) + "\n"


def _delay(value: int | None) -> str:
    return "-" if value is None else str(value)


def base_settings(state_root: Path, rows_per_year: int) -> Settings:
    """The settings every cell starts from: the product's defaults, the synthetic source at this size."""
    return Settings(state_dir=state_root, synthetic=SyntheticConfig(rows_per_year=rows_per_year))
