"""The embedded stack's login, process marker and task-log reading, without starting Airflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from driftwheel_ops.local_stack import STACK_MARKER_ENV, LocalStack, StackConfig, _last_error, terminate_tree


def _stack(state: Path) -> LocalStack:
    return LocalStack(StackConfig(state_dir=state, dags_folder=state / "dags", airflow_db_uri="postgresql://x/af",
                                  mlflow_db_uri="postgresql://x/ml"))  # fmt: skip


def test_the_embedded_api_needs_a_login_with_a_stored_private_password(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    env = stack.env
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    user, password = stack.admin_credentials()
    assert user == "admin" and len(password) >= 16
    passwords = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    assert passwords == stack.passwords_file
    assert json.loads(passwords.read_text()) == {"admin": password}
    assert passwords.stat().st_mode & 0o777 == 0o600
    assert _stack(tmp_path).admin_credentials() == (user, password)  # generated once


def test_every_process_of_the_stack_is_marked_and_found_by_its_marker(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    assert stack.env[STACK_MARKER_ENV] == str(stack.state_dir)
    # A grandchild in its own session whose parent has exited: what a killed scheduler leaves.
    script = (
        "import subprocess, sys; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)"
    )
    marked = {**os.environ, STACK_MARKER_ENV: str(stack.state_dir)}
    subprocess.run([sys.executable, "-c", script], env=marked, check=True)
    deadline = time.monotonic() + 10
    while not (found := stack.stack_processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(found) == 1 and found[0].ppid() != os.getpid()
    assert _stack(tmp_path / "other").stack_processes() == []
    # A process that a live pid file names (started by another object, e.g. `stack.sh up`) is spared.
    kept = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=marked)
    (stack.run_dir).mkdir(parents=True)
    (stack.run_dir / "kept.pid").write_text(f"{kept.pid} {psutil.Process(kept.pid).create_time()}\n")
    try:
        stack.stop()  # nothing was started by this object, yet the orphan is ended
        assert not found[0].is_running() or found[0].status() == psutil.STATUS_ZOMBIE
        assert kept.poll() is None
    finally:
        kept.kill()
        kept.wait()


def test_terminate_tree_ends_the_group_of_a_leader_that_is_already_dead() -> None:
    leader = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
         "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); time.sleep(60)"],
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not psutil.Process(leader.pid).children() and time.monotonic() < deadline:
        time.sleep(0.1)
    worker = psutil.Process(leader.pid).children()[0]
    leader.send_signal(signal.SIGKILL)
    leader.wait()
    terminate_tree(leader.pid, grace=1.0)  # the worker ignores SIGTERM, like a LocalExecutor worker
    assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE


def test_the_last_error_of_a_task_log_is_the_raised_exception(tmp_path: Path) -> None:
    log = tmp_path / "attempt=2.log"
    log.write_text(
        "\n".join(
            json.dumps(r)
            for r in (
                {"timestamp": "t", "event": "starting", "level": "info"},
                {
                    "event": "Task failed with exception",
                    "level": "error",
                    "error_detail": [
                        {"exc_type": "FileExistsError", "exc_value": "[Errno 17] File exists: 'reports/year=2009'"},
                        {"exc_type": "OSError", "exc_value": "the cause"},
                    ],
                },
                {"event": "Task instance is in failed state", "level": "info"},
            )
        )  # fmt: skip
    )
    assert _last_error(log) == "FileExistsError: [Errno 17] File exists: 'reports/year=2009'"
    log.write_text('{"event": "Process exited abnormally", "level": "error"}\nnot json\n')
    assert _last_error(log) == "Process exited abnormally"
    assert _last_error(tmp_path / "missing.log") is None
