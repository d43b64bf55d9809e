"""The server topology of docker-compose.yaml without Docker: Airflow on Celery, and MLflow.

:class:`NativeStack` starts, as processes on this machine, what the compose file starts as
containers -- ``mlflow server`` (tracking store and registry on PostgreSQL, artifacts served over
HTTP), ``airflow api-server``, ``dag-processor``, ``triggerer``, N ``airflow celery worker`` and
``airflow scheduler`` with the CeleryExecutor -- on a PostgreSQL server and a Redis broker that
are already running and named by DSNs. ``scripts/stack.sh up|down|status`` (``make stack``) drives
it from the environment::

    FLYWHEEL_AIRFLOW_DB_URI    Airflow's metadata database, also the Celery result backend
                               (default postgresql+psycopg2://postgres@127.0.0.1:5432/flywheel_airflow)
    FLYWHEEL_MLFLOW_DB_URI     MLflow's tracking store and registry
                               (default postgresql+psycopg2://postgres@127.0.0.1:5432/flywheel_mlflow)
    FLYWHEEL_CELERY_BROKER_URL the Celery broker (default redis://127.0.0.1:6379/0)
    FLYWHEEL_STACK_DIR         state of the stack (default <FLYWHEEL_STATE_DIR or repo/state>/server)
    FLYWHEEL_WORKERS           Celery workers (default 2), FLYWHEEL_WORKER_CONCURRENCY (default 2)
    FLYWHEEL_CELERY_QUEUE      the queue tasks are sent to and the workers serve (default "default")
    FLYWHEEL_API_HOST/PORT     Airflow UI and REST API (default 127.0.0.1:8080)
    FLYWHEEL_MLFLOW_PORT       MLflow UI and API on the same host (default 5000)
    FLYWHEEL_ADMIN_PASSWORD    password of the UI user ``admin`` (default: generated once)
    FLYWHEEL_MLFLOW_AUTH_DB_URI  MLflow's user store (default: MLflow's database name + "_auth")
    FLYWHEEL_MLFLOW_ADMIN_PASSWORD  password of MLflow's ``admin`` when its user store is created
                               (default: generated once)
    FLYWHEEL_TASK_HEARTBEAT_TIMEOUT  seconds without a heartbeat after which a running task is
                               taken as lost (its worker died) and retried (default 60)
    FLYWHEEL_TASK_QUEUED_TIMEOUT  seconds a task may stay queued -- sent to a worker that died before
                               starting it -- before the scheduler sends it again (default 120)

Databases that do not exist yet are created. Everything else lives under the stack directory::

    airflow/            AIRFLOW_HOME: task logs
    logs/<name>.log     output of each process (worker-1.log ... for the Celery workers)
    run/<name>.pid      pid and start time of each process: ``down`` stops these and nothing else
    mlflow-artifacts/   the MLflow server's artifact store (tasks reach it over HTTP only)
    passwords.json      the UI user's password (simple auth manager), mode 0600
    mlflow-users.json   passwords of MLflow's ``admin`` and of ``flywheel`` (the tasks' user), 0600
    mlflow-auth.ini     the MLflow basic-auth app's configuration (its database, the admin), 0600
    secrets.json        JWT secret, API secret key, Fernet key, MLflow's Flask key; generated once, 0600
    landing/ curated/ reports/ ...   the flywheel's own state (FLYWHEEL_STATE_DIR of the tasks)

Unlike the embedded demo (:class:`~driftwheel_ops.local_stack.LocalStack`), the REST API and the UI
require a login: the simple auth manager with one admin user. Compose uses the FAB auth manager,
which this project does not install natively. MLflow runs its basic-auth app: every request but
``/health`` needs a user; ``admin`` is created with the user store, and ``up`` creates ``flywheel``
(no admin, EDIT on every experiment and registered model), the user the Celery workers' tasks log
and register models as (MLFLOW_TRACKING_USERNAME/PASSWORD, read by MLflow's client). Each process
gets only the secrets it uses: MLflow none of Airflow's, only the workers MLflow's credentials.

``up`` is idempotent: it starts what is not running (by pid file and start time) and leaves the
rest alone, so after a crash of a worker or MLflow a second ``up`` starts just that process.
A task whose worker died mid-task stops heartbeating; after FLYWHEEL_TASK_HEARTBEAT_TIMEOUT the
scheduler fails that try and the task's retry runs on a live worker. A task the dead worker had
received but not started is still "queued" for Airflow: after FLYWHEEL_TASK_QUEUED_TIMEOUT the
scheduler revokes it and sends it again (at most twice, Airflow's ``num_stuck_in_queued_retries``,
then the try fails and the task's retries apply). The price of a short value: a task that merely
waits that long for a free worker slot is sent again too (harmless, it still waits for a slot) and,
after three such waits, failed; raise it if tasks queue for minutes behind long ones.

Several workers on one machine share one hostname, so each worker reports its Celery node name
(``worker-1@<host>``) as the hostname of the task instances it runs: the UI and the metadata
database then say which worker ran what. The workers do not serve logs (``--skip-serve-logs``):
they all write into the one local log folder, which the api-server reads directly.

This module never imports airflow.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from driftwheel_ops.local_stack import (
    LocalStack,
    StackConfig,
    StackError,
    _ensure_database,
    recorded_process,
    terminate_tree,
)
from driftwheel_ops.mlflow_users import MLFLOW_ADMIN, TASK_USER, ProvisionError, provision_task_user

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
ADMIN_USER = "admin"
# The tasks' MLflow user: no admin, EDIT on every experiment and registered model.
MLFLOW_TASK_USER = TASK_USER
DEFAULT_TASK_HEARTBEAT_TIMEOUT = 60
DEFAULT_TASK_QUEUED_TIMEOUT = 120
# How often the scheduler looks for tasks queued longer than that (Airflow: every 120 s).
TASK_QUEUED_CHECK_INTERVAL = 15
# The worker's node name, read by worker_hostname() in the task processes the worker starts.
WORKER_HOSTNAME_ENV = "FLYWHEEL_WORKER_HOSTNAME"
CELERY_PRELOAD_MODULE = "driftwheel_airflow.celery_preload"


def worker_hostname() -> str:
    """Airflow's ``[core] hostname_callable`` on the stack's workers: the Celery node name."""
    return os.environ.get(WORKER_HOSTNAME_ENV) or socket.getfqdn()


@dataclass(frozen=True)
class NativeStackConfig:
    state_dir: Path
    airflow_db_uri: str  # metadata database and Celery result backend
    mlflow_db_uri: str
    broker_url: str  # redis://host:port/db
    dags_folder: Path = REPO_ROOT / "dags"
    plugins_folder: Path = REPO_ROOT / "plugins"
    python_path: tuple[Path, ...] = (REPO_ROOT / "include",)
    workers: int = 2
    worker_concurrency: int = 2
    # The Celery queue tasks go to and workers listen on: stacks sharing a broker stay apart.
    queue: str = "default"
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    mlflow_port: int = 5000
    admin_password: str | None = None  # None: generated on first start, kept in passwords.json
    mlflow_auth_db_uri: str | None = None  # None: the MLflow database's name + "_auth", same server
    mlflow_admin_password: str | None = None  # None: generated on first start, kept in mlflow-users.json
    # A lost task (its worker died) is retried this many seconds after its last heartbeat.
    task_heartbeat_timeout: int = DEFAULT_TASK_HEARTBEAT_TIMEOUT
    # A task a dead worker received but never started is sent again this many seconds after queueing.
    task_queued_timeout: int = DEFAULT_TASK_QUEUED_TIMEOUT
    extra_env: Mapping[str, str] = field(default_factory=dict)  # passed to every Airflow process

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NativeStackConfig:
        """The configuration ``scripts/stack.sh`` uses: the variables in the module docstring.

        Other ``FLYWHEEL_*`` variables (source, rows per year, ...) are passed to the tasks.
        """
        env = os.environ if env is None else env
        state_root = Path(env.get("FLYWHEEL_STATE_DIR") or REPO_ROOT / "state")
        state_dir = Path(env.get("FLYWHEEL_STACK_DIR") or state_root / "server")
        own = {
            "FLYWHEEL_STATE_DIR", "FLYWHEEL_STACK_DIR", "FLYWHEEL_AIRFLOW_DB_URI", "FLYWHEEL_MLFLOW_DB_URI",
            "FLYWHEEL_CELERY_BROKER_URL", "FLYWHEEL_WORKERS", "FLYWHEEL_WORKER_CONCURRENCY", "FLYWHEEL_CELERY_QUEUE",
            "FLYWHEEL_API_HOST", "FLYWHEEL_API_PORT", "FLYWHEEL_MLFLOW_PORT", "FLYWHEEL_ADMIN_PASSWORD",
            "FLYWHEEL_MLFLOW_TRACKING_URI", "FLYWHEEL_MLFLOW_AUTH_DB_URI", "FLYWHEEL_MLFLOW_ADMIN_PASSWORD",
            "FLYWHEEL_TASK_HEARTBEAT_TIMEOUT", "FLYWHEEL_TASK_QUEUED_TIMEOUT",
        }  # fmt: skip
        return cls(
            state_dir=state_dir,
            airflow_db_uri=env.get("FLYWHEEL_AIRFLOW_DB_URI") or f"{DEFAULT_PG}/flywheel_airflow",
            mlflow_db_uri=env.get("FLYWHEEL_MLFLOW_DB_URI") or f"{DEFAULT_PG}/flywheel_mlflow",
            broker_url=env.get("FLYWHEEL_CELERY_BROKER_URL") or "redis://127.0.0.1:6379/0",
            workers=int(env.get("FLYWHEEL_WORKERS", "2")),
            worker_concurrency=int(env.get("FLYWHEEL_WORKER_CONCURRENCY", "2")),
            queue=env.get("FLYWHEEL_CELERY_QUEUE", "default"),
            api_host=env.get("FLYWHEEL_API_HOST", "127.0.0.1"),
            api_port=int(env.get("FLYWHEEL_API_PORT", "8080")),
            mlflow_port=int(env.get("FLYWHEEL_MLFLOW_PORT", "5000")),
            admin_password=env.get("FLYWHEEL_ADMIN_PASSWORD") or None,
            mlflow_auth_db_uri=env.get("FLYWHEEL_MLFLOW_AUTH_DB_URI") or None,
            mlflow_admin_password=env.get("FLYWHEEL_MLFLOW_ADMIN_PASSWORD") or None,
            task_heartbeat_timeout=int(env.get("FLYWHEEL_TASK_HEARTBEAT_TIMEOUT") or DEFAULT_TASK_HEARTBEAT_TIMEOUT),
            task_queued_timeout=int(env.get("FLYWHEEL_TASK_QUEUED_TIMEOUT") or DEFAULT_TASK_QUEUED_TIMEOUT),
            extra_env={k: v for k, v in env.items() if k.startswith("FLYWHEEL_") and k not in own},
        )


class NativeStack(LocalStack):
    """MLflow, and Airflow with the CeleryExecutor, as processes; a context manager like LocalStack.

    ``start()`` starts every process that is not running yet and returns once the API server
    reports scheduler, dag-processor and triggerer healthy, every worker is ready and MLflow
    answers. The processes do not depend on this Python process: ``scripts/stack.sh up`` starts
    them and exits, ``down`` stops them from their pid files (:func:`stop_recorded`).
    """

    executor = "CeleryExecutor"
    # Seven processes importing Airflow (or MLflow) at once take minutes on a small, busy machine.
    start_timeout = 600.0

    def __init__(self, config: NativeStackConfig) -> None:
        if config.workers < 1:
            raise ValueError(f"the CeleryExecutor needs at least one worker, got {config.workers}")
        self.native = config
        super().__init__(
            StackConfig(
                state_dir=config.state_dir,
                dags_folder=config.dags_folder,
                plugins_folder=config.plugins_folder,
                python_path=config.python_path,
                airflow_db_uri=config.airflow_db_uri,
                mlflow_db_uri=config.mlflow_db_uri,
                api_port=config.api_port,
                extra_env=config.extra_env,
            )
        )
        self.artifacts_dir = self.state_dir / "mlflow-artifacts"
        self._fqdn = socket.getfqdn()
        # The triggerer serves its logs on a fixed port (8794) by default: another stack would clash.
        self._trigger_log_port = _free_port()
        # Where each process's output starts in its log (logs are appended to across restarts).
        self._log_offsets: dict[str, int] = {}
        # What the last start() found running and what it started.
        self.already_running: list[str] = []
        self.started: list[str] = []

    # -- what runs ---------------------------------------------------------------------------

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.native.mlflow_port}"

    @property
    def mlflow_auth_db_uri(self) -> str:
        """The basic-auth app's user store: its own database, next to MLflow's by default."""
        if self.native.mlflow_auth_db_uri:
            return self.native.mlflow_auth_db_uri
        base, sep, query = self.mlflow_db_uri.partition("?")
        return f"{base}_auth{sep}{query}"

    @property
    def worker_names(self) -> list[str]:
        """The Celery node names of the workers, which are also their task instances' hostname."""
        return [f"worker-{i}@{self._fqdn}" for i in range(1, self.native.workers + 1)]

    def processes(self) -> dict[str, list[str]]:
        """Start order; stopped in reverse: the scheduler first (no new task is queued), then the
        workers (a warm shutdown lets running tasks finish), MLflow last."""
        airflow = self._airflow_bin
        procs: dict[str, list[str]] = {
            "mlflow": [
                sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
                "--backend-store-uri", self.mlflow_db_uri,
                "--serve-artifacts", "--artifacts-destination", str(self.artifacts_dir),
                "--host", "127.0.0.1", "--port", str(self.native.mlflow_port), "--workers", "1",
            ],
            "api-server": [airflow, "api-server"],
            "dag-processor": [airflow, "dag-processor"],
            "triggerer": [airflow, "triggerer"],
        }  # fmt: skip
        for i, node in enumerate(self.worker_names, start=1):
            procs[f"worker-{i}"] = [
                airflow, "celery", "worker", "--celery-hostname", node, "--queues", self.native.queue,
                "--concurrency", str(self.native.worker_concurrency), "--skip-serve-logs",
            ]  # fmt: skip
        procs["scheduler"] = [airflow, "scheduler"]
        return procs

    @property
    def env(self) -> dict[str, str]:
        """The environment of the Airflow processes (the workers add MLflow's credentials)."""
        keys = self._secrets()
        return {
            **super().env,
            "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self._passwords_file),
            "AIRFLOW__API__HOST": self.native.api_host,
            "AIRFLOW__CELERY__BROKER_URL": self.native.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.airflow_db_uri,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.native.worker_concurrency),
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.native.queue,
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
            # A task of a dead worker stops heartbeating: fail that try (and so retry the task)
            # after this long instead of Airflow's 300 s. Tasks heartbeat every few seconds
            # ([workers] min_heartbeat_interval, 5 s), so a live task never comes near it.
            # Not the broker's redelivery ([celery] task_acks_late, visibility timeout 24 h): a
            # redelivered workload of a task already "running" would be refused by the execution
            # API anyway.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.native.task_heartbeat_timeout),
            # A task the dead worker received but never started stays "queued": the scheduler
            # sends it again after this long instead of 600 s (see the module docstring).
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": str(self.native.task_queued_timeout),
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": str(TASK_QUEUED_CHECK_INTERVAL),
            # One message reserved per free slot, acknowledged when the task ends: a dead worker
            # holds at most what it ran (Airflow's defaults, pinned here).
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
            # Each worker imports the tasks' libraries once, before its pool forks (DRIFTWHEEL_PRELOAD).
            "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": json.dumps({"imports": [CELERY_PRELOAD_MODULE]}),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self._trigger_log_port),
            "FLYWHEEL_STATE_DIR": str(self.state_dir),
            "FLYWHEEL_MLFLOW_TRACKING_URI": self.mlflow_url,
            "FLYWHEEL_MLFLOW_UI_URL": self.mlflow_url,
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            **self.native.extra_env,
        }

    @property
    def mlflow_env(self) -> dict[str, str]:
        """The MLflow server's environment: this process's, less every Airflow and flywheel
        setting and secret, plus the basic-auth app's configuration."""
        dropped = ("AIRFLOW", "FLYWHEEL_", "SPOTIPY_", "MLFLOW_TRACKING_")
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
        return {
            **inherited,
            "MLFLOW_AUTH_CONFIG_PATH": str(self._mlflow_auth_ini),
            # Signs the auth app's CSRF tokens; must not change between restarts.
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self._secrets()["mlflow_secret_key"],
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }

    def admin_credentials(self) -> tuple[str, str]:
        """(user, password) of the UI and REST API user."""
        return ADMIN_USER, self._admin_password()

    def mlflow_credentials(self, user: str = MLFLOW_TASK_USER) -> tuple[str, str]:
        """(user, password) of MLflow's ``admin`` or of ``flywheel``, the tasks' user."""
        return user, self._mlflow_passwords()[user]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the processes that do not run yet, then wait until the whole stack is healthy.

        Running ones (pid file + start time) are left alone; a port that another process holds
        stops the start with its pid. Sets :attr:`already_running` and :attr:`started`.
        """
        if self._procs:
            return
        t0 = time.monotonic()
        for d in (self.airflow_home, self.logs_dir, self.run_dir, self.artifacts_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._admin_password()
        self._mlflow_passwords()
        running = {name for name, proc in self.recorded().items() if proc is not None}
        missing = [name for name in self.processes() if name not in running]
        self.already_running = [name for name in self.processes() if name in running]
        self.started = []
        if not missing:
            log.info("all %d processes already run; nothing to start", len(running))
            return
        for name, port in (("api-server", self.native.api_port), ("mlflow", self.native.mlflow_port)):
            owner = _listener(port)
            if name in missing and owner is not None:
                raise StackError(f"port {port} ({name}) is held by another process: {_describe(owner)}")
        try:
            self._log_server_port = _free_port()
            for uri in (self.airflow_db_uri, self.mlflow_db_uri, self.mlflow_auth_db_uri):
                _ensure_database(uri)
            procs = self.processes()
            if "mlflow" in missing:
                # MLflow boots (tens of seconds on a busy machine) while Airflow's database migrates
                # below: neither needs the other.
                self._write_mlflow_auth_ini()
                self._spawn("mlflow", procs["mlflow"], self.mlflow_env)
            if "api-server" in missing:
                # A running api-server means `up` migrated the database when it started it.
                self.airflow("db", "migrate", timeout=600)
            if "mlflow" in missing:
                self._wait_mlflow(timeout=self.start_timeout)
            # Every `up`, so that a new or rotated password in mlflow-users.json takes effect.
            self._provision_task_user()
            for name in missing:
                if name != "mlflow":
                    self._spawn(name, procs[name])
            self._wait_healthy(timeout=self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.started = missing
        log.info("started %s in %.1fs; UI at %s", ", ".join(missing), time.monotonic() - t0, self.api_url)

    def recorded(self) -> dict[str, psutil.Process | None]:
        """name -> the live process its pid file names (None: not started, or dead) for each process."""
        return {name: recorded_process(self._pid_file(name)) for name in self.processes()}

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        log_path = self.logs_dir / f"{name}.log"
        self._log_offsets[name] = log_path.stat().st_size if log_path.exists() else 0
        if name.startswith("worker-"):
            node = self.worker_names[int(name.removeprefix("worker-")) - 1]
            user, password = self.mlflow_credentials()
            env = {
                **self.env,
                # The module's import path, never ``__name__``: under `python -m` (scripts/stack.sh)
                # that is "__main__", which the workers' task processes cannot import.
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "driftwheel_ops.native_stack.worker_hostname",
                WORKER_HOSTNAME_ENV: node,
                # Read by MLflow's client in the tasks: they log and register as this user.
                "MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": password,
            }
        elif name == "api-server":
            # The plugin's timeline page reads the period runs; MLflow answers no anonymous request.
            user, password = self.mlflow_credentials()
            env = {**self.env, "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
        super()._spawn(name, argv, env)

    def _healthy(self, health: Mapping[str, Any]) -> bool:
        up = [(health.get(k) or {}).get("status") for k in ("scheduler", "dag_processor", "triggerer")]
        if not all(s == "healthy" for s in up):
            return False
        for i, node in enumerate(self.worker_names, start=1):
            with (self.logs_dir / f"worker-{i}.log").open("rb") as worker_log:
                worker_log.seek(self._log_offsets.get(f"worker-{i}", 0))
                if f"{node} ready.".encode() not in worker_log.read():
                    return False
        return _http_ok(f"{self.mlflow_url}/health")

    def _wait_mlflow(self, timeout: float) -> None:
        """Until MLflow's /health answers; raises StackError with its log if it exits first."""
        deadline = time.monotonic() + timeout
        proc = self._procs["mlflow"]
        while not _http_ok(f"{self.mlflow_url}/health"):
            if proc.poll() is not None:
                text = (self.logs_dir / "mlflow.log").read_text(errors="replace").splitlines()
                raise StackError(f"mlflow exited with {proc.returncode}:\n" + "\n".join(text[-40:]))
            if time.monotonic() > deadline:
                raise StackError(f"MLflow not answering at {self.mlflow_url} after {timeout}s")
            time.sleep(0.5)

    # -- internals ---------------------------------------------------------------------------

    @property
    def _passwords_file(self) -> Path:
        return self.state_dir / "passwords.json"

    @property
    def _mlflow_auth_ini(self) -> Path:
        return self.state_dir / "mlflow-auth.ini"

    def _secrets(self) -> dict[str, str]:
        keys = super()._secrets()
        if "fernet_key" not in keys or "mlflow_secret_key" not in keys:
            from cryptography.fernet import Fernet  # installed with airflow

            keys.setdefault("fernet_key", Fernet.generate_key().decode())
            keys.setdefault("mlflow_secret_key", secrets.token_urlsafe(32))
            _write_private(self.state_dir / "secrets.json", json.dumps(keys))
        return keys

    def _admin_password(self) -> str:
        """The configured password, else the one stored on first start, else a new random one."""
        path = self._passwords_file
        stored = json.loads(path.read_text()) if path.exists() else {}
        password = self.native.admin_password or stored.get(ADMIN_USER) or secrets.token_urlsafe(16)
        if stored.get(ADMIN_USER) != password:
            _write_private(path, json.dumps({**stored, ADMIN_USER: password}))
        return str(password)

    def _mlflow_passwords(self) -> dict[str, str]:
        """MLflow user -> password: generated once and kept in mlflow-users.json (0600).

        The configured admin password wins, but MLflow applies it only when it creates its user
        store: later, change it through MLflow's update-password API.
        """
        path = self.state_dir / "mlflow-users.json"
        stored = json.loads(path.read_text()) if path.exists() else {}
        wanted = {
            MLFLOW_ADMIN: self.native.mlflow_admin_password or stored.get(MLFLOW_ADMIN) or secrets.token_urlsafe(18),
            MLFLOW_TASK_USER: stored.get(MLFLOW_TASK_USER) or secrets.token_urlsafe(18),
        }
        if {k: stored.get(k) for k in wanted} != wanted:
            _write_private(path, json.dumps({**stored, **wanted}))
        return {k: str(v) for k, v in wanted.items()}

    def _write_mlflow_auth_ini(self) -> None:
        """The basic-auth app's configuration (keys of mlflow/server/auth/basic_auth.ini)."""
        ini = configparser.ConfigParser(interpolation=None)
        ini["mlflow"] = {
            # Only logged-in users get anything; a user reads everything, and edits what it made
            # or was granted (flywheel: everything).
            "default_permission": "READ",
            "database_uri": self.mlflow_auth_db_uri,
            "admin_username": MLFLOW_ADMIN,
            "admin_password": self._mlflow_passwords()[MLFLOW_ADMIN],
            "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        }
        path = self._mlflow_auth_ini
        _write_private(path, "")
        with path.open("w") as out:
            ini.write(out)

    def _provision_task_user(self) -> None:
        """Create (or reset the password of) ``flywheel`` with EDIT on every experiment and model."""
        try:
            provision_task_user(self.mlflow_url, self.mlflow_credentials(MLFLOW_ADMIN), self.mlflow_credentials())
        except ProvisionError as err:
            raise StackError(str(err)) from None


def stop_recorded(state_dir: Path) -> list[str]:
    """Stop the processes recorded under ``state_dir/run`` (a stack started by another process).

    The scheduler first, MLflow and the api-server last (the order of :meth:`NativeStack.processes`
    reversed). Only pids whose start time matches the pid file are signalled. Returns the names stopped.
    """
    run_dir = state_dir / "run"
    order = ["scheduler", "worker-", "triggerer", "dag-processor", "api-server", "mlflow"]

    def rank(path: Path) -> tuple[int, str]:
        name = path.stem
        for i, prefix in enumerate(order):
            if name.startswith(prefix):
                return i, name
        return len(order), name

    stopped = []
    for path in sorted(run_dir.glob("*.pid"), key=rank):
        proc = recorded_process(path)
        if proc is not None:
            t0 = time.monotonic()
            terminate_tree(proc.pid)
            log.info("stopped %s (pid %d) in %.1fs", path.stem, proc.pid, time.monotonic() - t0)
            stopped.append(path.stem)
        path.unlink(missing_ok=True)
    return stopped


def status(stack: NativeStack) -> dict[str, str]:
    """name -> what really runs, for every process of the stack and the two ports.

    A process is "running (pid N, since HH:MM:SS)" when its pid file names a live process with the
    recorded start time, "DEAD (pid N ...)" when the file names one that is gone, else "not started".
    A port is "answers (pid N, ours)", "FOREIGN pid N ... listens" when a process the stack did not
    start holds it, or "no answer".
    """
    out: dict[str, str] = {}
    ours: set[int] = set()
    for name, proc in stack.recorded().items():
        pid_file = stack.run_dir / f"{name}.pid"
        if proc is not None:
            with contextlib.suppress(psutil.Error):
                ours |= {proc.pid, *(c.pid for c in proc.children(recursive=True))}
            since = time.strftime("%H:%M:%S", time.localtime(proc.create_time()))
            out[name] = f"running (pid {proc.pid}, since {since})"
        elif pid_file.exists():
            pid = (pid_file.read_text().split() or ["?"])[0]
            out[name] = f"DEAD (pid {pid} recorded, no longer running): `scripts/stack.sh up` restarts it"
        else:
            out[name] = "not started"
    endpoints = (
        ("Airflow UI/API", stack.api_url, stack.native.api_port, f"{stack.api_url}/api/v2/monitor/health"),
        ("MLflow UI/API", stack.mlflow_url, stack.native.mlflow_port, f"{stack.mlflow_url}/health"),
    )
    for label, url, port, health in endpoints:
        owner = _listener(port)
        if owner is not None and owner.pid not in ours:
            out[label] = f"{url} FOREIGN process listens: {_describe(owner)} (not started by this stack)"
        elif owner is not None:
            answer = "answers" if _http_ok(health) else "listening, health check fails"
            out[label] = f"{url} {answer} (pid {owner.pid}, ours)"
        else:
            out[label] = f"{url} no answer"
    return out


def _listener(port: int) -> psutil.Process | None:
    """The process listening on 127.0.0.1/any address at ``port``, or None (pid unknown: None too)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                return psutil.Process(conn.pid)
            except psutil.Error:
                continue
    return None


def _describe(proc: psutil.Process) -> str:
    """ "pid N (command line)" for a message."""
    try:
        cmd = " ".join(proc.cmdline())[:120]
    except psutil.Error:
        cmd = "?"
    return f"pid {proc.pid} ({cmd})"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    """``up``, ``down`` or ``status`` of the stack configured by the environment."""
    parser = argparse.ArgumentParser(prog="scripts/stack.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    config = NativeStackConfig.from_env()
    if args.command == "down":
        stopped = stop_recorded(config.state_dir.resolve())
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    stack = NativeStack(config)
    if args.command == "status":
        report = status(stack)
        for name, state in report.items():
            print(f"{name:<15} {state}")
        # Non-zero when a process is not running or a port is held by someone else: usable in scripts.
        whole = all(report[name].startswith("running") for name in stack.processes())
        return 0 if whole and not any("FOREIGN" in state for state in report.values()) else 1
    try:
        stack.start()
    except StackError as err:
        print(f"scripts/stack.sh up: {err}", file=sys.stderr)
        return 1
    if not stack.started:
        print(f"all {len(stack.already_running)} processes already running; nothing started")
    else:
        print(f"started: {', '.join(stack.started)}")
        if stack.already_running:
            print(f"already running, left alone: {', '.join(stack.already_running)}")
    user, _ = stack.admin_credentials()
    print(f"Airflow UI and REST API: {stack.api_url}  (user {user!r}, password in {stack._passwords_file})")
    print(f"MLflow UI and API:       {stack.mlflow_url}  (users admin and {MLFLOW_TASK_USER!r}, "
          f"passwords in {stack.state_dir / 'mlflow-users.json'})")  # fmt: skip
    print(f"Celery workers:          {', '.join(stack.worker_names)}")
    print(f"logs: {stack.logs_dir}   stop: scripts/stack.sh down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
