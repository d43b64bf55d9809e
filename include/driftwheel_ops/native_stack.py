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

Databases that do not exist yet are created. Everything else lives under the stack directory::

    airflow/            AIRFLOW_HOME: task logs
    logs/<name>.log     output of each process (worker-1.log ... for the Celery workers)
    run/<name>.pid      pid and start time of each process: ``down`` stops these and nothing else
    mlflow-artifacts/   the MLflow server's artifact store (tasks reach it over HTTP only)
    passwords.json      the UI user's password (simple auth manager), mode 0600
    secrets.json        JWT secret, API secret key and Fernet key, generated once, mode 0600
    landing/ curated/ reports/ ...   the flywheel's own state (FLYWHEEL_STATE_DIR of the tasks)

Unlike the embedded demo (:class:`~driftwheel_ops.local_stack.LocalStack`), the REST API and the UI
require a login: the simple auth manager with one admin user. Compose uses the FAB auth manager,
which this project does not install natively.

Several workers on one machine share one hostname, so each worker reports its Celery node name
(``worker-1@<host>``) as the hostname of the task instances it runs: the UI and the metadata
database then say which worker ran what. The workers do not serve logs (``--skip-serve-logs``):
they all write into the one local log folder, which the api-server reads directly.

This module never imports airflow.
"""

from __future__ import annotations

import argparse
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

from driftwheel_ops.local_stack import (
    LocalStack,
    StackConfig,
    StackError,
    recorded_process,
    terminate_tree,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
ADMIN_USER = "admin"
# The worker's node name, read by worker_hostname() in the task processes the worker starts.
WORKER_HOSTNAME_ENV = "FLYWHEEL_WORKER_HOSTNAME"


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
    extra_env: Mapping[str, str] = field(default_factory=dict)  # passed to every process

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
            "FLYWHEEL_MLFLOW_TRACKING_URI",
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
            extra_env={k: v for k, v in env.items() if k.startswith("FLYWHEEL_") and k not in own},
        )


class NativeStack(LocalStack):
    """MLflow, and Airflow with the CeleryExecutor, as processes; a context manager like LocalStack.

    ``start()`` returns once the API server reports scheduler, dag-processor and triggerer
    healthy, every worker is ready and MLflow answers. The processes do not depend on this
    Python process: ``scripts/stack.sh up`` starts them and exits, ``down`` stops them from
    their pid files (:func:`stop_recorded`).
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

    # -- what runs ---------------------------------------------------------------------------

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.native.mlflow_port}"

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
                sys.executable, "-m", "mlflow", "server",
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
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self._trigger_log_port),
            "FLYWHEEL_STATE_DIR": str(self.state_dir),
            "FLYWHEEL_MLFLOW_TRACKING_URI": self.mlflow_url,
            "FLYWHEEL_MLFLOW_UI_URL": self.mlflow_url,
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            **self.native.extra_env,
        }

    def admin_credentials(self) -> tuple[str, str]:
        """(user, password) of the UI and REST API user."""
        return ADMIN_USER, self._admin_password()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        running = [p.stem for p in self._pid_files() if recorded_process(p) is not None]
        if running and not self._procs:
            raise StackError(
                f"{', '.join(running)} of the stack in {self.state_dir} already running: "
                "`scripts/stack.sh down` first"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self._admin_password()
        if _port_in_use(self.native.mlflow_port):
            raise StackError(f"port {self.native.mlflow_port} (MLflow) is already in use")
        super().start()

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        log_path = self.logs_dir / f"{name}.log"
        self._log_offsets[name] = log_path.stat().st_size if log_path.exists() else 0
        if name.startswith("worker-"):
            node = self.worker_names[int(name.removeprefix("worker-")) - 1]
            env = {
                **self.env,
                # The module's import path, never ``__name__``: under `python -m` (scripts/stack.sh)
                # that is "__main__", which the workers' task processes cannot import.
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "driftwheel_ops.native_stack.worker_hostname",
                WORKER_HOSTNAME_ENV: node,
            }
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

    # -- internals ---------------------------------------------------------------------------

    @property
    def _passwords_file(self) -> Path:
        return self.state_dir / "passwords.json"

    def _secrets(self) -> dict[str, str]:
        keys = super()._secrets()
        if "fernet_key" not in keys:
            from cryptography.fernet import Fernet  # installed with airflow

            keys["fernet_key"] = Fernet.generate_key().decode()
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

    def _pid_files(self) -> list[Path]:
        return sorted(self.run_dir.glob("*.pid"))


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
    """name -> "running (pid N)" or "stopped" for every recorded process, plus the two endpoints."""
    out = {}
    for path in sorted(stack.run_dir.glob("*.pid")):
        proc = recorded_process(path)
        out[path.stem] = f"running (pid {proc.pid})" if proc is not None else "stopped"
    health = f"{stack.api_url}/api/v2/monitor/health"
    out["Airflow UI/API"] = f"{stack.api_url} " + ("answers" if _http_ok(health) else "no answer")
    out["MLflow UI/API"] = f"{stack.mlflow_url} " + ("answers" if _http_ok(f"{stack.mlflow_url}/health") else "no answer")
    return out


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


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
        for name, state in status(stack).items():
            print(f"{name:<15} {state}")
        return 0
    stack.start()
    user, _ = stack.admin_credentials()
    print(f"Airflow UI and REST API: {stack.api_url}  (user {user!r}, password in {stack.state_dir / 'passwords.json'})")
    print(f"MLflow UI and API:       {stack.mlflow_url}")
    print(f"Celery workers:          {', '.join(stack.worker_names)}")
    print(f"logs: {stack.logs_dir}   stop: scripts/stack.sh down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
