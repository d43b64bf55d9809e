"""
### Live flywheel

Two DAGs joined by the Asset **`driftwheel_new_labeled_tracks`** (the UI's asset graph shows the lineage):

* **`live_ingest`** runs weekly: `collect_new_tracks` pulls the current year when the source is
  Spotify (or synthetic), then records every file newly dropped into the landing folder and
  counts its labeled rows per year; `decide_live_retrain` compares the rows pending since the last
  retrain with `min_new_rows` (FLYWHEEL_LIVE_MIN_NEW_ROWS, default 500) and branches to
  `announce_new_tracks`, which updates the asset with the years that are due, or `wait_for_rows`.
* **`live_retrain`** is scheduled on that asset: `plan_retrain` reads the years from the asset
  events, and `retrain_period` triggers `spotify_flywheel` once per year with `year`, `source`
  and `landing_dir` as Params -- the same validate, drift, decide, retrain and gate steps as the replay.

The library's `driftwheel.live` keeps a manifest of the seen files per landing folder under `<state>/live/`.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Asset, Param, dag, get_current_context, task

NEW_LABELED_TRACKS = Asset(name="driftwheel_new_labeled_tracks", uri="driftwheel://live/new-labeled-tracks")


def _settings() -> Any:
    from driftwheel.config import Settings

    return Settings.from_env().with_params(get_current_context()["params"])


@dag(
    dag_id="live_ingest",
    schedule="@weekly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["flywheel", "live"],
    params={
        "source": Param(
            None,
            type=["null", "string"],
            enum=[None, "synthetic", "file", "spotify"],
            description="Where new tracks come from; empty: FLYWHEEL_SOURCE.",
        ),
        "landing_dir": Param(None, type=["null", "string"], description="The landing folder the file source watches."),
        "min_new_rows": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="New labeled rows of a year that make a retrain worth considering.",
        ),
    },
)
def live_ingest() -> None:
    @task
    def collect_new_tracks() -> dict[str, Any]:
        from driftwheel import live
        from flywheel_connections import spotify_credentials  # the DAG folder is on sys.path

        settings = _settings()
        context = get_current_context()
        # The year a Spotify pull fetches: the one the run belongs to (a manual run has no logical date).
        year = (context.get("logical_date") or context["dag_run"].run_after).year
        return live.collect_new_tracks(settings, year, spotify_credentials(settings))

    @task.branch
    def decide_live_retrain(collected: dict[str, Any]) -> str:
        from driftwheel import live

        pending = {int(p): n for p, n in collected["pending"].items()}
        return "announce_new_tracks" if live.due_periods(pending, _settings().live) else "wait_for_rows"

    @task(outlets=[NEW_LABELED_TRACKS])
    def announce_new_tracks(collected: dict[str, Any]) -> dict[str, Any]:
        from driftwheel import live

        settings = _settings()
        due = live.due_periods({int(p): n for p, n in collected["pending"].items()}, settings.live)
        announced = live.announce(settings, due)
        get_current_context()["outlet_events"][NEW_LABELED_TRACKS].extra = {
            "confs": [live.retrain_conf(settings, p) for p in announced["periods"]],
            "rows": announced["rows"],
        }
        return announced

    @task
    def wait_for_rows(collected: dict[str, Any]) -> None:
        """Not enough new labeled rows yet: they stay pending for next week."""

    collected = collect_new_tracks()
    decide_live_retrain(collected) >> [announce_new_tracks(collected), wait_for_rows(collected)]


@dag(
    dag_id="live_retrain",
    schedule=[NEW_LABELED_TRACKS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["flywheel", "live"],
)
def live_retrain() -> None:
    @task
    def plan_retrain() -> list[dict[str, Any]]:
        events = get_current_context()["triggering_asset_events"][NEW_LABELED_TRACKS]
        confs = {c["year"]: c for event in events for c in (event.extra or {}).get("confs", [])}
        return [confs[year] for year in sorted(confs)]

    # No logical date: the year comes from the conf, and the yearly DAG's end date (a replay's
    # FLYWHEEL_LAST_YEAR) or an existing run of that year's 1 January cannot block the run.
    TriggerDagRunOperator.partial(
        task_id="retrain_period", trigger_dag_id="spotify_flywheel", logical_date=None, wait_for_completion=False
    ).expand(conf=plan_retrain())


live_ingest()
live_retrain()
