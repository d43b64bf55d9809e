"""End to end on the server topology without Docker: Celery workers, PostgreSQL, Redis, MLflow over HTTP.

:class:`driftwheel_ops.native_stack.NativeStack` starts MLflow (PostgreSQL store, served artifacts), the
Airflow api-server, dag-processor, triggerer, scheduler (CeleryExecutor) and two Celery workers on
the machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379). The scheduler backfills
2013-2015 (a cold start in 2013, then drift decisions), then 2016 is triggered through the REST
API the way the UI's trigger form does it, as a logged-in user. Last, live mode: files dropped
into a landing folder reach training through live_ingest, the asset and live_retrain.
Set FLYWHEEL_KEEP_STATE=1 to keep the stack's directory (logs) after the run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from driftwheel import registry, report
from driftwheel_ops.local_stack import RunState
from driftwheel_ops.native_stack import NativeStack, NativeStackConfig
from tracks import make_tracks

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

DAG_ID = "spotify_flywheel"
MODEL = "spotify_popularity_native"
EXPERIMENT = "driftwheel_native"
REDIS = os.environ.get("FLYWHEEL_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = 11  # the other tests use no Redis; a queue per session keeps two sessions apart too
QUEUE = f"flywheel_e2e_{os.environ.get('FLYWHEEL_TEST_DB_SUFFIX', os.getpid())}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    stack: NativeStack
    state_dir: Path
    backfill: list[RunState]
    backfill_seconds: float

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = psycopg2.connect(self.stack.airflow_db_uri.replace("+psycopg2", ""))
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        """(status, JSON body) of a call to the Airflow API server."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.stack.api_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def token(self, username: str, password: str) -> tuple[int, Any]:
        return self.request("POST", "/auth/token", {"username": username, "password": password})


@pytest.fixture(scope="module")
def server(fresh_database: Callable[[str], str]) -> Iterator[Server]:
    state_dir = Path(tempfile.mkdtemp(prefix="fw-native-", dir="/tmp"))
    config = NativeStackConfig(
        state_dir=state_dir,
        airflow_db_uri=fresh_database("flywheel_native_airflow"),
        mlflow_db_uri=fresh_database("flywheel_native_mlflow"),
        broker_url=f"{REDIS}/{REDIS_DB}",
        queue=QUEUE,
        workers=2,
        worker_concurrency=1,
        api_port=_free_port(),
        mlflow_port=_free_port(),
        extra_env={
            "FLYWHEEL_SOURCE": "synthetic",
            "FLYWHEEL_MODEL_NAME": MODEL,
            "FLYWHEEL_EXPERIMENT": EXPERIMENT,
            "FLYWHEEL_FIRST_YEAR": "2013",
            "FLYWHEEL_LAST_YEAR": "2016",
            "FLYWHEEL_WARMUP_START": "2013",
            "FLYWHEEL_WARMUP_END": "2013",
            "FLYWHEEL_ROWS_PER_YEAR": "400",
            "FLYWHEEL_EPOCHS": "4",
            "FLYWHEEL_FINE_TUNE_EPOCHS": "4",
        },
    )
    try:
        with NativeStack(config) as stack:
            stack.wait_for_dag(DAG_ID, timeout=300)
            t0 = time.monotonic()
            runs = stack.backfill(DAG_ID, date(2013, 1, 1), date(2015, 1, 1), timeout=1200)
            elapsed = time.monotonic() - t0
            log.info("backfill 2013-2015 on Celery took %.0fs", elapsed)
            yield Server(stack, state_dir, runs, elapsed)
    finally:
        _forget_queue(QUEUE)
        if not os.environ.get("FLYWHEEL_KEEP_STATE"):
            shutil.rmtree(state_dir, ignore_errors=True)


def _forget_queue(queue: str) -> None:
    import redis

    client = redis.Redis.from_url(f"{REDIS}/{REDIS_DB}")
    # The queue, and kombu's bindings of it (their key prefix differs between kombu releases).
    client.delete(queue, *client.scan_iter(match=f"_kombu.binding*.{queue}"))
    client.close()


def _tracking(server: Server) -> Any:
    return registry.connect(server.stack.mlflow_url)


def _table(server: Server) -> dict[int, report.PeriodRow]:
    client = _tracking(server)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return {r.year: r for r in report.period_table(client, experiment_id)}


def test_the_scheduler_backfills_years_on_celery(server: Server) -> None:
    assert [r.logical_date.year for r in server.backfill if r.logical_date] == [2013, 2014, 2015]
    assert [r.state for r in server.backfill] == ["success"] * 3, server.backfill
    rows = _table(server)
    print("\n" + report.format_table(list(rows.values())))
    assert rows[2013].decision == "retrain" and rows[2013].promoted  # the cold start
    assert rows[2014].production_rmse is not None  # scored by the 2013 champion before retraining
    assert {rows[y].decision for y in (2014, 2015)} <= {"retrain", "skip"}


def test_rest_api_refuses_anonymous_and_wrong_password_and_triggers_like_the_ui_form(server: Server) -> None:
    user, password = server.stack.admin_credentials()
    path = f"/api/v2/dags/{DAG_ID}/dagRuns"

    # The trigger form's request (airflow/ui TriggerDAGForm): the whole Params dict as conf, the
    # logical date as an ISO instant, empty data-interval fields as null.
    conf = {
        "year": 2016, "source": None, "landing_dir": None, "strategy": "full", "force_retrain": True,
        "max_drift_share": None, "max_rmse_increase": None, "min_improvement": None,
    }  # fmt: skip
    body = {
        "conf": conf, "logical_date": "2016-01-01T00:00:00.000Z",
        "data_interval_start": None, "data_interval_end": None, "partition_key": None,
    }  # fmt: skip

    status, _ = server.request("POST", path, body)
    assert status == 401
    status, answer = server.token(user, password + "-wrong")
    assert status == 401 and "access_token" not in (answer or {})
    status, _ = server.request("POST", path, body, token="not-a-jwt")
    assert status in (401, 403)  # Airflow answers a token it cannot decode with 403
    assert server.query("SELECT COUNT(*) FROM dag_run WHERE run_type = 'manual'")[0][0] == 0

    status, answer = server.token(user, password)
    assert status == 201, answer
    versions_before = len(_tracking(server).search_model_versions(f"name='{MODEL}'"))
    status, run = server.request("POST", path, body, token=answer["access_token"])
    assert status == 200, run
    assert run["conf"]["year"] == 2016 and run["run_type"] == "manual"
    assert run["logical_date"].startswith("2016-01-01T00:00:00")

    finished = server.stack.wait_for_run(DAG_ID, run["dag_run_id"], timeout=900)
    assert finished.state == "success"
    states = server.stack.task_states(DAG_ID, run["dag_run_id"])
    assert states["retrain_model"] == "success"  # force_retrain from the form
    assert len(_tracking(server).search_model_versions(f"name='{MODEL}'")) == versions_before + 1
    assert _table(server)[2016].decision == "retrain"


def test_task_instances_ran_on_the_celery_workers(server: Server) -> None:
    rows = server.query(
        "SELECT task_id, run_id, hostname, queue, state FROM task_instance"
        " WHERE dag_id = %s AND state IN ('success', 'failed')",
        (DAG_ID,),
    )
    assert len(rows) >= 3 * 7
    assert {q for _, _, _, q, _ in rows} == {QUEUE}
    by_worker: dict[str, list[str]] = {}
    for task_id, run_id, hostname, _, _ in rows:
        by_worker.setdefault(hostname, []).append(f"{run_id}:{task_id}")
    log.info("task instances per Celery worker: %s", {h: len(t) for h, t in by_worker.items()})
    print("\n" + "\n".join(f"{h}: {sorted(t)}" for h, t in by_worker.items()))
    assert set(by_worker) == set(server.stack.worker_names), "both workers take tasks, nothing else does"

    # Each worker's own log shows the workloads it received, and they are the ones the database
    # attributes to it.
    for i, node in enumerate(server.stack.worker_names, start=1):
        worker_log = (server.stack.logs_dir / f"worker-{i}.log").read_text(errors="replace")
        assert f"{node} ready." in worker_log
        executed = {
            f"{run_id}:{task_id}"
            for task_id, run_id in re.findall(
                r"Executing workload in Celery: .*?task_id='([^']+)'.*?run_id='([^']+)'", worker_log
            )
        }
        assert executed and executed <= set(by_worker[node]) | _retried(server), (node, executed)
    # The scheduler hands tasks to the CeleryExecutor and to nothing else. (Its "TaskInstance
    # Finished" lines are not one per task instance: they cannot be counted against the rows.)
    scheduler_log = (server.stack.logs_dir / "scheduler.log").read_text(errors="replace")
    finished = re.findall(r"TaskInstance Finished: dag_id=spotify_flywheel, .*?executor=(\w+)", scheduler_log)
    assert finished and set(finished) == {"CeleryExecutor"}


def _retried(server: Server) -> set[str]:
    """Task instances that ran more than once (a retry may land on the other worker)."""
    rows = server.query("SELECT run_id, task_id FROM task_instance WHERE dag_id = %s AND try_number > 1", (DAG_ID,))
    return {f"{r}:{t}" for r, t in rows}


def test_models_are_logged_and_loaded_over_http(server: Server) -> None:
    import mlflow

    client = _tracking(server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    champion = client.get_model_version_by_alias(MODEL, "champion")
    run = client.get_run(champion.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")

    mlflow.set_tracking_uri(server.stack.mlflow_url)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    tracks = make_tracks(2016, n=25)
    predicted = model.predict(tracks)
    assert len(predicted) == 25 and all(0 <= float(p) <= 100 for p in predicted)

    # The files are in the server's artifact store, and only there: the tasks wrote no local copy.
    stored = list(server.stack.artifacts_dir.rglob("MLmodel"))
    assert stored, "no model files in the MLflow server's artifact store"
    assert not (server.state_dir / "mlartifacts").exists()
    assert not (server.state_dir / "mlflow.db").exists()


def _wait_for(what: str, probe: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout}s")
        time.sleep(2)


def test_live_mode_hands_new_files_to_training_through_the_asset(server: Server) -> None:
    user, password = server.stack.admin_credentials()
    token = server.token(user, password)[1]["access_token"]
    for dag_id in ("live_ingest", "live_retrain"):
        status, dag = server.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False}, token=token)
        assert status == 200 and dag["is_paused"] is False, dag
    landing = server.state_dir / "incoming"
    landing.mkdir()
    make_tracks(2017, n=300).to_csv(landing / "week_01.csv", index=False)

    conf = {"source": "file", "landing_dir": str(landing), "min_new_rows": 200}
    status, run = server.request(
        "POST", "/api/v2/dags/live_ingest/dagRuns", {"conf": conf, "logical_date": None}, token=token
    )
    assert status == 200, run
    ingest = server.stack.wait_for_run("live_ingest", run["dag_run_id"], timeout=600)
    assert ingest.state == "success"
    assert server.stack.task_states("live_ingest", run["dag_run_id"])["announce_new_tracks"] == "success"

    # The asset event carries the due year; live_retrain, scheduled on the asset, triggers the yearly DAG.
    extra = server.query(
        "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = 'driftwheel_new_labeled_tracks'"
    )
    assert [json.loads(x) if isinstance(x, str) else x for (x,) in extra][0]["confs"] == [
        {"year": 2017, "source": "file", "landing_dir": str(landing)}
    ]
    retrain_run = _wait_for(
        "a live_retrain run", lambda: server.stack.dag_runs("live_retrain"), timeout=300
    )[0]
    assert server.stack.wait_for_run("live_retrain", retrain_run.run_id, timeout=600).state == "success"

    def yearly_2017() -> list[dict[str, Any]]:
        _, runs = server.request("GET", "/api/v2/dags/spotify_flywheel/dagRuns?limit=100", token=token)
        return [r for r in runs["dag_runs"] if (r.get("conf") or {}).get("year") == 2017]

    triggered = _wait_for("the spotify_flywheel run for 2017", yearly_2017, timeout=300)[0]
    assert triggered["conf"]["landing_dir"] == str(landing)
    assert server.stack.wait_for_run("spotify_flywheel", triggered["dag_run_id"], timeout=900).state == "success"
    states = server.stack.task_states("spotify_flywheel", triggered["dag_run_id"])
    assert states["validate_tracks"] == "success" and states["finish_period"] == "success", states
    table = _table(server)
    assert 2017 in table, (sorted(table), triggered)
    row = table[2017]
    assert row.rows == 300 and row.production_rmse is not None
