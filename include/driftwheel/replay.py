"""The flywheel in one process: every step of a period in the DAG's order, period after period.

This is the one place besides the DAG (``dags/spotify_flywheel.py``) that orders the steps. The
``replay`` command, the prequential benchmark and the fast tests all run periods through
:func:`replay`; the DAG runs the same :mod:`driftwheel.steps` functions as separate tasks, with
the same arguments and the same branches (retrain or skip; promote or reject).

No scheduler is involved: a failed step ends the period's MLflow run as FAILED (as the DAG's
failure callback does) and the error propagates; there are no retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from driftwheel import steps
from driftwheel.config import Settings
from driftwheel.decide import Decision
from driftwheel.report import PeriodRow

logger = logging.getLogger(__name__)

_R = TypeVar("_R")


class StepRunner(Protocol):
    """Runs one step: ``run(name, function, *args, **kwargs)`` returns what ``function`` returned.

    The replay calls each step directly (:func:`in_process`); the scale benchmark passes a runner that calls
    each step in a fresh process, as a DAG task is, so that each step's time and memory are its own.
    """

    def __call__(self, name: str, function: Callable[..., _R], /, *args: Any, **kwargs: Any) -> _R: ...


def in_process(name: str, function: Callable[..., _R], /, *args: Any, **kwargs: Any) -> _R:
    """The default :class:`StepRunner`: the step runs here."""
    return function(*args, **kwargs)


@dataclass(frozen=True)
class PeriodOutcome:
    """What the steps of one period returned; None for the steps its branches did not take."""

    period: int
    drift: dict[str, Any]  # report_drift: the drift summary, the period's MLflow run id
    decision: Decision
    challenger: dict[str, Any] | None  # retrain_model
    gate: dict[str, Any] | None  # evaluate_challenger
    promotion: dict[str, Any] | None  # promote_champion (None when the gate rejected)
    row: PeriodRow  # finish_period: the period's row of the per-year table
    retrain_seconds: float | None  # wall time of retrain_model, MLflow logging included
    seconds: float  # wall time of the whole period


def replay_period(settings: Settings, period: int, run: StepRunner = in_process) -> PeriodOutcome:
    """Run every step of ``period`` in the DAG's order (each through ``run``) and return what they returned.

    Raises what the failing step raised (:class:`driftwheel.steps.PeriodRefused`, a
    :class:`driftwheel.config.DataError` for a bad batch, ...), after ending the period's MLflow
    run as FAILED with the step's name and the error.
    """
    started = time.perf_counter()
    step = "ingest_tracks"
    try:
        run("ingest_tracks", steps.ingest_tracks, settings, period)
        step = "validate_tracks"
        run("validate_tracks", steps.validate_tracks, settings, period)
        step = "report_drift"
        drift = run("report_drift", steps.report_drift, settings, period)
        # The champion is resolved once, by report_drift; every later step gets that version.
        run_id, champion = drift["mlflow_run_id"], drift["champion_version"]
        step = "decide_retrain"
        decision = run("decide_retrain", steps.decide_retrain, settings, drift)
        challenger = gate = promotion = None
        retrain_seconds = None
        if decision.retrain:
            step = "retrain_model"
            retrain_started = time.perf_counter()
            challenger = run("retrain_model", steps.retrain_model, settings, period, run_id, champion)
            retrain_seconds = time.perf_counter() - retrain_started
            step = "evaluate_challenger"
            version = challenger["version"]
            gate = run(
                "evaluate_challenger",
                steps.evaluate_challenger,
                settings,
                period,
                run_id,
                version,
                champion,
                challenger.get("refused"),
            )
            step = "decide_promotion"  # the DAG's branch: it only maps the gate to the next task
            if gate["passed"]:
                step = "promote_champion"
                promotion = run(
                    "promote_champion",
                    steps.promote_champion,
                    settings,
                    run_id,
                    version,
                    period=period,
                    gated_against=champion,
                    gate=gate,
                )
            else:
                step = "reject_challenger"
                run(
                    "reject_challenger",
                    steps.reject_challenger,
                    settings,
                    run_id,
                    version,
                    gate["reason"],
                    period=period,
                    champion_version=champion,
                    gate=gate,
                )
        step = "finish_period"
        row = PeriodRow(**run("finish_period", steps.finish_period, settings, period, run_id))
    except Exception as error:
        reason = f"{step} failed: {error}"
        error.add_note(f"replay: period {period} failed in {step}")
        try:
            steps.fail_period(settings, period, reason)
        except Exception:  # marking the run must not hide the step's own error
            logger.exception("could not mark the MLflow run of period %s FAILED", period)
        raise
    return PeriodOutcome(
        period, drift, decision, challenger, gate, promotion, row, retrain_seconds, time.perf_counter() - started
    )


def replay(
    settings: Settings,
    periods: Iterable[int],
    on_period: Callable[[PeriodOutcome], None] | None = None,
    run: StepRunner = in_process,
) -> list[PeriodRow]:
    """Replay ``periods`` in the given order, each through every step; the per-year table's rows.

    Each period starts from the champion the previous one left, as in the DAG's chained runs.
    ``on_period`` is called after each period with everything its steps returned (progress output,
    the benchmark's timings). Stops at the first period that fails (see :func:`replay_period`).
    """
    rows = []
    for period in periods:
        outcome = replay_period(settings, period, run)
        if on_period is not None:
            on_period(outcome)
        rows.append(outcome.row)
    return rows
