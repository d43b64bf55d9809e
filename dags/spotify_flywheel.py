"""
### Spotify popularity flywheel

One run per year: **ingest → validate → drift report → decide → retrain → evaluate → promote**.

* `ingest_tracks` lands the year's raw tracks (synthetic by default, shaped by the `scenario` param's
  drift preset; a folder of CSV/Parquet files; or the Spotify Web API with the `spotify_default`
  connection's client id and secret).
* `validate_tracks` checks them against the declared schema; bad rows are quarantined, a bad batch
  fails the run (the message names the file, column and rule) and nothing downstream runs.
* `report_drift` compares the year with the champion's training data (Evidently) and scores the
  champion on the new year *before* any retraining: the production error.
* `decide_retrain` branches to `retrain_model` or `skip_retrain` (pure policy, reason recorded).
* `retrain_model` fine-tunes the champion (transfer learning) or trains from scratch and
  registers the challenger in MLflow; `evaluate_challenger` gates it against the champion and
  the previous year's mean on a held-out split (the champion's predictions are the ones
  `report_drift` made); `decide_promotion` branches on the gate's result to `promote_champion`
  (moves the `champion` alias) or `reject_challenger`.

Runs chain in year order (`max_active_runs=1`, `depends_on_past`, and `ingest_tracks` refuses a year whose
previous year has not finished): each year starts from the model
the previous year left in production. Everything is logged to the MLflow run `period-<year>`.
Trigger a single year from the form with the `year` param; backfill with
`airflow backfill create --dag-id spotify_flywheel --from-date 2008-01-01 --to-date 2020-01-01`.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from driftwheel.config import SCENARIO_PRESETS, Schedule


def _settings(context: Any = None) -> Any:
    """The library's settings: the environment, overridden by this run's Params.

    Params the DAG does not declare, or a landing folder outside the allowed roots, fail the run
    at once without retries: they are refused, never applied.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from driftwheel.config import DataError, Settings

    try:
        return Settings.from_env().with_params((context or get_current_context())["params"])
    except DataError as refused:  # undeclared Params, a forbidden landing folder, a bad setting
        raise AirflowFailException(str(refused)) from refused


def _end_period_run(context: Any) -> None:
    """on_failure_callback: a failed task ends its period's MLflow run as FAILED, with the error."""
    import logging

    from driftwheel import steps

    try:
        # Callbacks run after the task, outside get_current_context(): read the context given.
        reason = f"{context['ti'].task_id} failed: {context.get('exception')}"
        steps.fail_period(_settings(context), _period(context), reason)
    except Exception:  # the callback must not hide the task's own error
        logging.getLogger(__name__).exception("could not mark the period's MLflow run FAILED")


def _period(context: Any = None) -> int:
    """The year this run processes: the ``year`` param, else the run's logical date."""
    context = context or get_current_context()
    if context["params"].get("year"):
        return int(context["params"]["year"])
    logical_date = context.get("logical_date")
    if logical_date is None:
        raise ValueError("this run has no logical date: set the 'year' param to choose the period")
    return logical_date.year


# FLYWHEEL_FIRST_YEAR (2008) and FLYWHEEL_LAST_YEAR: a replay over a closed range of years (the
# demo, the tests) sets the last year so that unpausing the DAG does not also schedule a run for the
# current year; live use leaves it unset. A light import: the config module loads no data library.
SCHEDULE = Schedule.from_env()


@dag(
    dag_id="spotify_flywheel",
    dag_display_name=SCHEDULE.display_name,
    schedule="@yearly",
    start_date=pendulum.datetime(SCHEDULE.first_year, 1, 1, tz="UTC"),
    end_date=pendulum.datetime(SCHEDULE.last_year, 12, 31, tz="UTC") if SCHEDULE.last_year else None,
    catchup=False,
    max_active_runs=1,
    default_args={
        "depends_on_past": True,
        "retries": 1,
        "retry_delay": pendulum.duration(seconds=10),
        "on_failure_callback": _end_period_run,
    },
    doc_md=__doc__,
    tags=list(SCHEDULE.tags),
    params={
        "year": Param(
            None,
            type=["null", "integer"],
            minimum=1900,
            maximum=2100,
            description="Year to process; empty: the run's logical date.",
        ),
        "source": Param(
            None,
            type=["null", "string"],
            enum=[None, "synthetic", "file", "spotify"],
            description="Where tracks come from; empty: FLYWHEEL_SOURCE (synthetic).",
        ),
        "landing_dir": Param(
            None, type=["null", "string"], description="Folder of CSV/Parquet files for the file source."
        ),
        "scenario": Param(
            None,
            type=["null", "string"],
            enum=[None, *SCENARIO_PRESETS],
            description="Drift scenario of the synthetic source (driftwheel.scenarios); empty: FLYWHEEL_SCENARIO "
            "(spotify_like). Each scenario lands in its own folder; from this run's year on, the flywheel "
            "sees the scenario's data (python -m driftwheel lab compares the policies on it).",
        ),
        "strategy": Param(
            "trend_residual",
            type="string",
            enum=["trend_residual", "transfer", "full"],
            description="trend_residual: trend level + residual ensemble, fine-tuned with replay (benchmarks/prequential.py); transfer: the study net, first 3 layers frozen; full: the study net from scratch.",
        ),
        "force_retrain": Param(False, type="boolean", description="Retrain even if nothing drifted."),
        "max_drift_share": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=1,
            description="Share of drifted features that triggers a retrain.",
        ),
        "max_rmse_increase": Param(
            None,
            type=["null", "number"],
            minimum=0,
            description="Retrain when production RMSE exceeds the champion's held-out RMSE by this fraction.",
        ),
        "min_improvement": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=1,
            description="How much better (fraction of RMSE) a challenger must be to be promoted.",
        ),
    },
)
def spotify_flywheel() -> None:
    @task
    def ingest_tracks() -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from driftwheel import steps
        from driftwheel.config import DataError
        from flywheel_connections import spotify_credentials  # the DAG folder is on sys.path

        try:
            settings = _settings()
            run_id = get_current_context()["run_id"]
            return steps.ingest_tracks(settings, _period(), spotify_credentials(settings), run=run_id)
        except (DataError, steps.PeriodRefused) as error:
            # An unreadable file, a wrong column map or a period out of order will not get better
            # on retry: fail now.
            raise AirflowFailException(str(error)) from error

    @task
    def validate_tracks(landed: dict[str, Any]) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from driftwheel import steps
        from driftwheel.config import DataError

        try:
            return steps.validate_tracks(_settings(), landed["period"])
        except DataError as rejected:
            # A bad batch will not get better on retry: fail now, leave the champion alone.
            raise AirflowFailException(str(rejected)) from rejected

    @task
    def report_drift(validated: dict[str, Any]) -> dict[str, Any]:
        from driftwheel import steps

        run_id = get_current_context()["run_id"]
        return steps.report_drift(_settings(), validated["period"], {"airflow.run_id": run_id})

    @task.branch
    def decide_retrain(summary: dict[str, Any]) -> str:
        from driftwheel import steps

        return "retrain_model" if steps.decide_retrain(_settings(), summary).retrain else "skip_retrain"

    @task
    def skip_retrain(summary: dict[str, Any]) -> None:
        """Nothing to train: the decision and its reason are on the period's MLflow run."""

    @task
    def retrain_model(summary: dict[str, Any]) -> dict[str, Any]:
        from driftwheel import steps

        return steps.retrain_model(
            _settings(), summary["period"], summary["mlflow_run_id"], summary["champion_version"]
        )

    @task
    def evaluate_challenger(summary: dict[str, Any], challenger: dict[str, Any]) -> dict[str, Any]:
        from driftwheel import steps

        return steps.evaluate_challenger(
            _settings(),
            summary["period"],
            summary["mlflow_run_id"],
            challenger["version"],
            summary["champion_version"],  # resolved once, at the start of the run
            challenger.get("refused"),
        )

    @task.branch
    def decide_promotion(gate: dict[str, Any]) -> str:
        return "promote_champion" if gate["passed"] else "reject_challenger"

    @task
    def promote_champion(summary: dict[str, Any], challenger: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
        from driftwheel import steps

        return steps.promote_champion(
            _settings(),
            summary["mlflow_run_id"],
            challenger["version"],
            period=summary["period"],
            gated_against=summary["champion_version"],
            gate=gate,
        )

    @task
    def reject_challenger(summary: dict[str, Any], challenger: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
        from driftwheel import steps

        return steps.reject_challenger(
            _settings(),
            summary["mlflow_run_id"],
            challenger["version"],
            gate["reason"],
            period=summary["period"],
            champion_version=summary["champion_version"],
            gate=gate,
        )

    @task(trigger_rule="none_failed_min_one_success")
    def finish_period(summary: dict[str, Any]) -> dict[str, Any]:
        from driftwheel import steps

        return steps.finish_period(
            _settings(), summary["period"], summary["mlflow_run_id"], get_current_context()["run_id"]
        )

    summary = report_drift(validate_tracks(ingest_tracks()))
    decision = decide_retrain(summary)
    challenger = retrain_model(summary)
    gate = evaluate_challenger(summary, challenger)
    promoted, rejected = promote_champion(summary, challenger, gate), reject_challenger(summary, challenger, gate)
    skipped = skip_retrain(summary)
    decision >> [challenger, skipped]
    decide_promotion(gate) >> [promoted, rejected]
    [promoted, rejected, skipped] >> finish_period(summary)


spotify_flywheel()
