"""The native server stack's configuration and its process bookkeeping, without starting Airflow."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from driftwheel_ops.native_stack import (
    REPO_ROOT,
    WORKER_HOSTNAME_ENV,
    NativeStack,
    NativeStackConfig,
    stop_recorded,
    worker_hostname,
)


def test_config_from_env_defaults_to_the_local_servers_and_passes_flywheel_settings_on() -> None:
    config = NativeStackConfig.from_env({"FLYWHEEL_STATE_DIR": "/srv/fw", "FLYWHEEL_SOURCE": "file", "HOME": "/root"})
    assert config.state_dir == Path("/srv/fw/server")
    assert config.airflow_db_uri.endswith("@127.0.0.1:5432/flywheel_airflow")
    assert config.broker_url == "redis://127.0.0.1:6379/0"
    assert (config.workers, config.api_port, config.mlflow_port) == (2, 8080, 5000)
    assert config.plugins_folder == REPO_ROOT / "plugins"
    # The stack's own settings are not passed to the tasks; the flywheel's are.
    assert dict(config.extra_env) == {"FLYWHEEL_SOURCE": "file"}


def test_config_from_env_reads_the_dsns_and_sizes() -> None:
    env = {
        "FLYWHEEL_STACK_DIR": "/tmp/s",
        "FLYWHEEL_AIRFLOW_DB_URI": "postgresql+psycopg2://a@db/af",
        "FLYWHEEL_MLFLOW_DB_URI": "postgresql+psycopg2://m@db/ml",
        "FLYWHEEL_CELERY_BROKER_URL": "redis://broker:6379/3",
        "FLYWHEEL_WORKERS": "5",
        "FLYWHEEL_API_PORT": "9090",
        "FLYWHEEL_ADMIN_PASSWORD": "pw",
    }
    config = NativeStackConfig.from_env(env)
    assert config.state_dir == Path("/tmp/s")
    assert (config.airflow_db_uri, config.mlflow_db_uri) == (
        env["FLYWHEEL_AIRFLOW_DB_URI"],
        env["FLYWHEEL_MLFLOW_DB_URI"],
    )
    assert (config.broker_url, config.workers, config.api_port) == ("redis://broker:6379/3", 5, 9090)
    assert config.admin_password == "pw" and not config.extra_env


def _stack(tmp_path: Path, **changes: object) -> NativeStack:
    config = NativeStackConfig(
        state_dir=tmp_path,
        airflow_db_uri="postgresql+psycopg2://postgres@127.0.0.1:5432/af",
        mlflow_db_uri="postgresql+psycopg2://postgres@127.0.0.1:5432/ml",
        broker_url="redis://127.0.0.1:6379/9",
        mlflow_port=5999,
        queue="q1",
        **changes,  # type: ignore[arg-type]
    )
    return NativeStack(config)


def test_every_process_gets_celery_login_and_the_mlflow_server(tmp_path: Path) -> None:
    stack = _stack(tmp_path, workers=3)
    env = stack.env
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/9"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql+psycopg2://postgres@127.0.0.1:5432/af"
    assert env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == "q1"
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(REPO_ROOT / "plugins")
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert env["FLYWHEEL_MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999"
    assert env["AIRFLOW__CORE__FERNET_KEY"] == stack.env["AIRFLOW__CORE__FERNET_KEY"]  # generated once

    procs = stack.processes()
    assert list(procs) == [
        "mlflow",
        "api-server",
        "dag-processor",
        "triggerer",
        "worker-1",
        "worker-2",
        "worker-3",
        "scheduler",
    ]
    assert "--serve-artifacts" in procs["mlflow"] and str(stack.artifacts_dir) in procs["mlflow"]
    worker = procs["worker-2"]
    assert worker[1:3] == ["celery", "worker"]
    assert worker[worker.index("--celery-hostname") + 1] == stack.worker_names[1]
    assert worker[worker.index("--queues") + 1] == "q1"
    assert len(set(stack.worker_names)) == 3


def test_the_admin_password_is_generated_once_and_private(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    user, password = stack.admin_credentials()
    assert user == "admin" and len(password) >= 16
    assert _stack(tmp_path).admin_credentials() == (user, password)
    path = tmp_path / "passwords.json"
    assert json.loads(path.read_text()) == {"admin": password}
    assert path.stat().st_mode & 0o077 == 0
    assert stack.env["AIRFLOW__CORE__FERNET_KEY"]
    assert (tmp_path / "secrets.json").stat().st_mode & 0o077 == 0
    # A configured password wins and is written for the api-server to read.
    assert _stack(tmp_path, admin_password="chosen").admin_credentials() == ("admin", "chosen")
    assert json.loads(path.read_text()) == {"admin": "chosen"}


def test_worker_hostname_is_the_workers_node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKER_HOSTNAME_ENV, "worker-2@box")
    assert worker_hostname() == "worker-2@box"
    monkeypatch.delenv(WORKER_HOSTNAME_ENV)
    assert worker_hostname()


def test_down_stops_only_the_processes_its_pid_files_name(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        (run / "worker-1.pid").write_text(f"{ours.pid} {psutil.Process(ours.pid).create_time()}\n")
        # A pid file whose pid now belongs to another process (a different start time): left alone.
        (run / "scheduler.pid").write_text(f"{bystander.pid} {psutil.Process(bystander.pid).create_time() - 100}\n")
        (run / "mlflow.pid").write_text("999999999 1.0\n")  # long gone

        assert stop_recorded(tmp_path) == ["worker-1"]
        assert ours.wait(timeout=30) is not None
        time.sleep(0.2)
        assert bystander.poll() is None
        assert not list(run.glob("*.pid"))
    finally:
        for proc in (ours, bystander):
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()


def test_config_from_env_reads_the_mlflow_auth_and_the_heartbeat_timeout() -> None:
    config = NativeStackConfig.from_env(
        {
            "FLYWHEEL_MLFLOW_AUTH_DB_URI": "postgresql+psycopg2://m@db/users",
            "FLYWHEEL_MLFLOW_ADMIN_PASSWORD": "a-long-admin-password",
            "FLYWHEEL_TASK_HEARTBEAT_TIMEOUT": "45",
        }
    )
    assert config.mlflow_auth_db_uri == "postgresql+psycopg2://m@db/users"
    assert config.mlflow_admin_password == "a-long-admin-password"
    assert config.task_heartbeat_timeout == 45 and not config.extra_env
    assert NativeStackConfig.from_env({}).task_heartbeat_timeout == 60


def test_a_task_lost_with_its_worker_is_retried_after_the_configured_heartbeat_timeout(tmp_path: Path) -> None:
    assert _stack(tmp_path).env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] == "60"
    env = _stack(tmp_path, task_heartbeat_timeout=20).env
    assert env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] == "20"


def test_a_task_a_dead_worker_never_started_is_sent_again_after_the_configured_queued_timeout(tmp_path: Path) -> None:
    """Not Airflow's 600 s: the scheduler requeues a task stuck in "queued" after 120 s (configurable),
    checking every 15 s; each worker holds one unacknowledged message per slot."""
    env = _stack(tmp_path).env
    assert env["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT"] == "120"
    assert env["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL"] == "15"
    assert env["AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER"] == "1"
    assert env["AIRFLOW__CELERY__TASK_ACKS_LATE"] == "True"
    assert NativeStackConfig.from_env({"FLYWHEEL_TASK_QUEUED_TIMEOUT": "90"}).task_queued_timeout == 90
    assert _stack(tmp_path, task_queued_timeout=45).env["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT"] == "45"


def test_mlflow_runs_the_basic_auth_app_with_its_own_user_store(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    argv = stack.processes()["mlflow"]
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    assert stack.mlflow_auth_db_uri == "postgresql+psycopg2://postgres@127.0.0.1:5432/ml_auth"
    stack._write_mlflow_auth_ini()
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(tmp_path / "mlflow-auth.ini")
    admin = stack.mlflow_credentials("admin")
    assert dict(ini["mlflow"]) == {
        "default_permission": "READ",
        "database_uri": "postgresql+psycopg2://postgres@127.0.0.1:5432/ml_auth",
        "admin_username": "admin",
        "admin_password": admin[1],
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    for name in ("mlflow-auth.ini", "mlflow-users.json"):
        assert (tmp_path / name).stat().st_mode & 0o077 == 0, name
    # Generated once; the tasks' user is another one than the admin, with its own password.
    user, password = stack.mlflow_credentials()
    assert user == "flywheel" and password != admin[1] and len(password) >= 16
    assert _stack(tmp_path).mlflow_credentials() == (user, password)
    given = _stack(tmp_path, mlflow_admin_password="given-by-env-123")
    assert given.mlflow_credentials("admin") == ("admin", "given-by-env-123")


def test_mlflow_gets_no_airflow_secret_and_only_the_workers_get_mlflow_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "inherited-jwt")
    monkeypatch.setenv("SPOTIPY_CLIENT_SECRET", "spotify-secret")
    monkeypatch.setenv("FLYWHEEL_ADMIN_PASSWORD", "ui-password")
    stack = _stack(tmp_path)
    env = stack.mlflow_env
    secret_keys = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY")
    airflow_secrets = {stack.env[k] for k in secret_keys}
    assert not [k for k in env if k.startswith(("AIRFLOW", "FLYWHEEL_", "SPOTIPY_", "MLFLOW_TRACKING_"))]
    assert not airflow_secrets & set(env.values()), "an Airflow secret reached MLflow under another name"
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(tmp_path / "mlflow-auth.ini")
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == stack.mlflow_env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert "MLFLOW_TRACKING_PASSWORD" not in stack.env  # api-server, scheduler, ...: no MLflow login
