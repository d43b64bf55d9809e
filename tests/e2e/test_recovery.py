"""Faults under the commands a user types: ``python -m driftwheel demo`` and ``... ui`` on the embedded default.

kill -9 of the scheduler mid-backfill, a year that fails, kill -9 of the embedded PostgreSQL: each
is reported within seconds with a non-zero exit, leaves no process behind, and the documented
rerun finishes the remaining years exactly once. The embedded API and the MLflow UI need a login.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import psycopg2.extensions
import pytest

pytestmark = pytest.mark.e2e

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
# Generous bounds: they only prove that nothing waits for the demo's one-hour timeout.
REPORTED_WITHIN = 60.0
RUN_TIMEOUT = 900.0


@pytest.fixture
def state_root() -> Iterator[Path]:
    # Short (the embedded PostgreSQL's socket lives in here) and traversable by PostgreSQL's own
    # user when the tests run as root; see tests/e2e/test_local_stack.py.
    root = Path(tempfile.mkdtemp(prefix="flywheel-rec-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cli:
    """``python -m driftwheel ...`` as a subprocess; its output lines collected with their arrival time."""

    def __init__(self, args: list[str], state: Path, **env: str) -> None:
        full_env = {
            **os.environ,
            # An inherited PYTHONPATH is kept: it may add what the venv lacks (see the MLflow login).
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "include"), os.environ.get("PYTHONPATH")])),
            "FLYWHEEL_STATE_DIR": str(state),
            "FLYWHEEL_ROWS_PER_YEAR": "300",
            **env,
        }
        for key in ("FLYWHEEL_AIRFLOW_DB_URI", "FLYWHEEL_MLFLOW_DB_URI", "FLYWHEEL_MLFLOW_TRACKING_URI"):
            full_env.pop(key, None)
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "driftwheel", *args],
            cwd=REPO,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for_line(self, pattern: str, timeout: float) -> tuple[float, re.Match[str]]:
        """(arrival time, match) of the first output line matching ``pattern``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return at, match
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.5)
        pytest.fail(f"no line matching {pattern!r} (exit {self.proc.poll()}):\n{self.output}")

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)
            pytest.fail(f"`python -m driftwheel {' '.join(self.args)}` still running after {timeout}s:\n{self.output}")
        self._reader.join(timeout=10)
        return int(self.proc.returncode)


def _processes_of(state: Path) -> list[psutil.Process]:
    """Live processes that belong to a stack on ``state``: by environment, working dir or command line."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            env = proc.environ()
            if (
                env.get("FLYWHEEL_STATE_DIR") == str(state)
                or proc.cwd().startswith(str(state))
                or any(str(state) in arg for arg in proc.cmdline())
            ):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _assert_nothing_left(state: Path) -> None:
    deadline = time.monotonic() + 10
    left = _processes_of(state)
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = _processes_of(state)
    described = []
    for proc in left:  # don't leave them to the next test, whatever the verdict
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline()[:4])}")
            proc.kill()
        except psutil.Error:
            pass
    assert not left, described


def _years(cli: Cli, state: str) -> list[int]:
    return [int(m.group(1)) for _, line in cli.lines if (m := re.match(rf"\s+(\d{{4}}): {state} in ", line))]


def _table_years(cli: Cli) -> list[int]:
    return [int(m.group(1)) for _, line in cli.lines if (m := re.match(r"\| (\d{4}) \| ", line))]


def _pid(path: Path) -> int:
    return int(path.read_text().split()[0])


def test_killed_scheduler_is_reported_at_once_and_the_rerun_finishes(state_root: Path) -> None:
    state = state_root / "state"
    args = ["--api-port", str(_free_port()), "demo", "--start", "2008", "--end", "2010"]
    first = Cli(args, state)
    try:
        first.wait_for_line(r"^\s+2008: success in", timeout=RUN_TIMEOUT)  # 2009 is running now
        scheduler = _pid(state / "run" / "scheduler.pid")
        killed_at = time.monotonic()
        os.kill(scheduler, signal.SIGKILL)
        said = r"scheduler \(pid \d+\) was killed by SIGKILL; its log: .*scheduler\.log"
        said_at, _ = first.wait_for_line(said, REPORTED_WITHIN)
        assert said_at - killed_at < REPORTED_WITHIN
        assert first.wait(timeout=300) != 0, first.output
        log.info("scheduler kill reported after %.1fs; demo exited after %.1fs",
                 said_at - killed_at, time.monotonic() - killed_at)  # fmt: skip
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
    assert "Traceback" not in first.output, first.output
    _assert_nothing_left(state)

    second = Cli(args, state)
    assert second.wait() == 0, second.output
    assert "an earlier backfill did not finish" in second.output
    done_first, done_second = _years(first, "success"), _years(second, "success")
    assert sorted(done_first + done_second) == [2008, 2009, 2010], (first.output, second.output)
    assert 2008 not in done_second  # a finished year is kept, not run again
    assert _table_years(second) == [2008, 2009, 2010]
    _assert_nothing_left(state)


def test_a_failed_year_names_task_error_and_log_and_the_printed_rerun_finishes(state_root: Path) -> None:
    state = state_root / "state"
    # The fault: 2009's drift report cannot be written, its folder is taken by a regular file
    # (chmod would not stop root).
    blocker = state / "reports" / "year=2009"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    args = ["--api-port", str(_free_port()), "demo", "--start", "2008", "--end", "2010"]
    first = Cli(args, state)
    t0 = time.monotonic()
    assert first.wait() == 1, first.output
    failed_at = next(at for at, line in first.lines if re.match(r"\s+2009: failed", line))
    log.info("failed year reported %.1fs after the demo started; demo exited %.1fs after that",
             failed_at - t0, time.monotonic() - failed_at)  # fmt: skip
    out = first.output
    assert _years(first, "success") == [2008], out
    assert _years(first, "failed") == [2009], out
    assert "year 2009 failed in task report_drift" in out, out
    assert re.search(r"error: FileExistsError: .*year=2009", out), out
    log_path = Path(re.search(r"log:\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    assert log_path.is_file() and log_path.is_relative_to(state / "airflow" / "logs"), log_path
    assert "task_id=report_drift" in str(log_path)
    assert "not run: 2010" in out
    assert "Traceback" not in out
    _assert_nothing_left(state)

    blocker.unlink()
    rerun = re.search(r"rerun: (.+?)  \(", out).group(1)  # type: ignore[union-attr]
    assert rerun == f"python -m driftwheel {shlex.join(args)}"
    second = Cli(shlex.split(rerun)[3:], state)
    assert second.wait() == 0, second.output
    assert _years(second, "success") == [2009, 2010], second.output
    assert _table_years(second) == [2008, 2009, 2010]
    _assert_nothing_left(state)


def _http(url: str, body: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def test_ui_needs_logins_and_a_killed_postgres_ends_it(state_root: Path) -> None:
    state = state_root / "state"
    api_port, mlflow_port = _free_port(), _free_port()
    cli = Cli(["--api-port", str(api_port), "ui", "--mlflow-port", str(mlflow_port)], state)
    try:
        cli.wait_for_line(r"Ctrl-C stops both", timeout=RUN_TIMEOUT)
        out = cli.output
        logins = re.findall(r"log in as (\S+) / (\S+)", out)
        airflow_user, airflow_password = logins[0]
        assert f"Airflow UI: http://127.0.0.1:{api_port}" in out
        assert (state / "passwords.json").stat().st_mode & 0o777 == 0o600

        api = f"http://127.0.0.1:{api_port}"
        assert _http(f"{api}/api/v2/dags")[0] == 401
        assert _http(f"{api}/auth/token", {"username": airflow_user, "password": "wrong"})[0] == 401
        assert _http(f"{api}/auth/token", {"username": "someone", "password": airflow_password})[0] == 401
        status, body = _http(f"{api}/auth/token", {"username": airflow_user, "password": airflow_password})
        assert status == 201, body
        token = json.loads(body)["access_token"]
        assert _http(f"{api}/api/v2/dags", headers={"Authorization": f"Bearer {token}"})[0] == 200

        search = f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/experiments/search?max_results=1"
        if importlib.util.find_spec("flask_wtf") is None:
            # Without mlflow[auth] the MLflow UI must not be served at all, least of all without a login.
            assert "MLflow UI:  not started: MLflow's login (its basic-auth app) needs Flask-WTF" in out
            with pytest.raises(OSError):
                urllib.request.urlopen(search, timeout=5)
        else:
            assert f"MLflow UI:  http://127.0.0.1:{mlflow_port}" in out
            mlflow_user, mlflow_password = logins[1]
            assert (state / "mlflow-auth" / "basic_auth.ini").stat().st_mode & 0o777 == 0o600
            assert _http(search)[0] == 401
            wrong = base64.b64encode(f"{mlflow_user}:wrong".encode()).decode()
            assert _http(search, headers={"Authorization": f"Basic {wrong}"})[0] == 401
            basic = base64.b64encode(f"{mlflow_user}:{mlflow_password}".encode()).decode()
            assert _http(search, headers={"Authorization": f"Basic {basic}"})[0] == 200

        postmaster = _pid(state / "pg" / "postmaster.pid")
        killed_at = time.monotonic()
        os.kill(postmaster, signal.SIGKILL)
        said_at, _ = cli.wait_for_line(r"PostgreSQL \(pid \d+\) is no longer running; its log: ", REPORTED_WITHIN)
        assert said_at - killed_at < REPORTED_WITHIN
        assert cli.wait(timeout=300) == 1, cli.output
        log.info("PostgreSQL kill reported after %.1fs; ui exited after %.1fs",
                 said_at - killed_at, time.monotonic() - killed_at)  # fmt: skip
    finally:
        if cli.proc.poll() is None:
            cli.proc.kill()
    assert "Traceback" not in cli.output, cli.output
    _assert_nothing_left(state)


# -- kill -9 during registration, and the API server or PostgreSQL dying under `demo` ------------------

# The key of the advisory lock the test holds while a registration waits for it (see _PAUSE_SQL).
PAUSE_KEY = 8_808_808
# Makes the first registry write that follows a *committed* model version wait for the test's
# advisory lock: setting an alias (what the flywheel does right after creating a version), or adding
# a tag to a version that an earlier transaction created (what a registration that tags after
# creating would do: there the version exists untagged while it waits). A tag written in the
# version's own transaction (the creation) passes. Installed in MLflow's database by the test only.
_PAUSE_SQL = f"""
CREATE FUNCTION test_pause_after_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'registered_model_aliases' OR EXISTS (
        SELECT 1 FROM model_versions
        WHERE name = NEW.name AND version = NEW.version
          AND xmin::text::bigint <> txid_current() % 4294967296
    ) THEN
        PERFORM pg_advisory_xact_lock({PAUSE_KEY});
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_pause_alias BEFORE INSERT OR UPDATE ON registered_model_aliases
    FOR EACH ROW EXECUTE FUNCTION test_pause_after_version();
CREATE TRIGGER test_pause_tag BEFORE INSERT ON model_version_tags
    FOR EACH ROW EXECUTE FUNCTION test_pause_after_version();
"""


def _embedded_pg(state: Path, database: str) -> psycopg2.extensions.connection:
    """A connection to the demo's embedded PostgreSQL (unix socket and port from postmaster.pid)."""
    lines = (state / "pg" / "postmaster.pid").read_text().splitlines()
    conn = psycopg2.connect(host=lines[4].strip(), port=int(lines[3]), user="postgres", dbname=database)
    conn.autocommit = True
    return conn


def _rows(conn: psycopg2.extensions.connection, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return list(cur.fetchall())


def _wait_for(what: str, probe: Callable[[], Any], cli: Cli, timeout: float = RUN_TIMEOUT, every: float = 0.2) -> Any:
    """The first truthy result of ``probe()``; fails if the demo exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = probe()
        except (psycopg2.OperationalError, psycopg2.ProgrammingError, FileNotFoundError, IndexError):
            found = None  # the embedded PostgreSQL, a database or its tables are not up yet
        if found:
            return found
        assert cli.proc.poll() is None, f"the demo ended while waiting for {what}:\n{cli.output}"
        time.sleep(every)
    pytest.fail(f"no {what} after {timeout}s:\n{cli.output}")


def _end(cli: Cli) -> None:
    """Stop the demo if a test failed midway: SIGTERM unwinds it and stops its stack; SIGKILL if it hangs."""
    if cli.proc.poll() is None:
        cli.proc.terminate()
        try:
            cli.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            cli.proc.kill()


def _task_process(ti_id: str) -> psutil.Process:
    """The task process that runs task instance ``ti_id`` (Airflow titles it ``airflow worker -- <id>``)."""
    for proc in psutil.process_iter():
        try:
            if f"airflow worker -- {ti_id}" in " ".join(proc.cmdline()):
                return proc
        except psutil.Error:
            continue
    pytest.fail(f"no task process for task instance {ti_id}")


def test_kill_9_while_registering_then_a_dead_api_server(state_root: Path) -> None:
    """kill -9 of ``retrain_model``'s process through the scheduler, at the moment its model version exists
    (PostgreSQL-backed MLflow): the retry reuses that version -- one version, fingerprinted, no orphan.
    Then kill -9 of the API server in the next year: the demo says so within seconds and exits 1."""
    state = state_root / "state"
    args = ["--api-port", str(_free_port()), "demo", "--start", "2008", "--end", "2009"]
    # 2008 trains the first model (no warm-up years to pool first).
    cli = Cli(args, state, FLYWHEEL_WARMUP_START="2008", FLYWHEEL_WARMUP_END="2008")
    holder: psycopg2.extensions.connection | None = None
    try:
        airflow_db = _wait_for("Airflow database", lambda: _embedded_pg(state, "airflow"), cli)
        running = "SELECT id::text, run_id, try_number FROM task_instance WHERE task_id = 'retrain_model' AND state = 'running'"
        ti_id, run_id, try_number = _wait_for("running retrain_model", lambda: _rows(airflow_db, running), cli)[0]
        assert try_number == 1
        mlflow_db = _embedded_pg(state, "mlflow")
        assert _rows(mlflow_db, "SELECT count(*) FROM model_versions") == [(0,)]  # the pause is in place in time
        holder = _embedded_pg(state, "mlflow")
        _rows(holder, f"SELECT pg_advisory_lock({PAUSE_KEY})")
        with mlflow_db.cursor() as cur:
            cur.execute(_PAUSE_SQL)
        waiting = f"SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = {PAUSE_KEY} AND NOT granted"
        _wait_for("registration waiting after its version was created", lambda: _rows(mlflow_db, waiting), cli, 300)
        versions = _rows(mlflow_db, "SELECT name, version FROM model_versions")
        assert len(versions) == 1, versions
        task = _task_process(ti_id)
        killed_at = time.monotonic()
        task.kill()
        task.wait(timeout=30)
        # The waiting transaction now runs on into a closed connection and rolls back; the retry
        # (10 s later) passes the pause freely.
        _rows(holder, f"SELECT pg_advisory_unlock({PAUSE_KEY})")
        with mlflow_db.cursor() as cur:
            cur.execute("DROP TRIGGER test_pause_alias ON registered_model_aliases;"
                        "DROP TRIGGER test_pause_tag ON model_version_tags")  # fmt: skip

        done_at, _ = cli.wait_for_line(r"^\s+2008: success in", timeout=RUN_TIMEOUT)
        log.info("2008 finished %.1fs after its registering task was killed", done_at - killed_at)
        name, version = versions[0]
        assert _rows(mlflow_db, "SELECT version FROM model_versions WHERE name = %s", (name,)) == [(version,)]
        tags = dict(_rows(mlflow_db, "SELECT key, value FROM model_version_tags WHERE name = %s", (name,)))
        assert tags.get("flywheel.fingerprint"), tags
        retried = _rows(
            airflow_db,
            "SELECT t.try_number, x.value FROM task_instance t JOIN xcom x ON x.task_id = t.task_id AND x.run_id = t.run_id"
            " WHERE t.task_id = 'retrain_model' AND t.run_id = %s AND x.key = 'return_value'",
            (run_id,),
        )
        assert len(retried) == 1 and retried[0][0] == 2, retried
        returned = retried[0][1] if isinstance(retried[0][1], dict) else json.loads(retried[0][1])
        assert returned["reused"] is True and returned["version"] == str(version), returned
        airflow_db.close()
        mlflow_db.close()

        # 2009 is running now.
        api_server = _pid(state / "run" / "api-server.pid")
        killed_at = time.monotonic()
        os.kill(api_server, signal.SIGKILL)
        said = r"api-server \(pid \d+\) was killed by SIGKILL; its log: .*api-server\.log"
        said_at, _ = cli.wait_for_line(said, REPORTED_WITHIN)
        assert cli.wait(timeout=300) == 1, cli.output
        log.info("API server kill reported after %.1fs; demo exited after %.1fs",
                 said_at - killed_at, time.monotonic() - killed_at)  # fmt: skip
    finally:
        if holder is not None:
            holder.close()
        _end(cli)
    assert "Traceback" not in cli.output, cli.output
    _assert_nothing_left(state)


def test_a_killed_postgres_ends_the_demo_at_once(state_root: Path) -> None:
    state = state_root / "state"
    cli = Cli(["--api-port", str(_free_port()), "demo", "--start", "2008", "--end", "2009"], state)
    try:
        airflow_db = _wait_for("Airflow database", lambda: _embedded_pg(state, "airflow"), cli)
        running = "SELECT task_id FROM task_instance WHERE state = 'running'"
        _wait_for("a running task", lambda: _rows(airflow_db, running), cli)
        airflow_db.close()
        postmaster = _pid(state / "pg" / "postmaster.pid")
        killed_at = time.monotonic()
        os.kill(postmaster, signal.SIGKILL)
        said_at, _ = cli.wait_for_line(r"PostgreSQL \(pid \d+\) is no longer running; its log: ", REPORTED_WITHIN)
        assert cli.wait(timeout=300) == 1, cli.output
        log.info("PostgreSQL kill under demo reported after %.1fs; demo exited after %.1fs",
                 said_at - killed_at, time.monotonic() - killed_at)  # fmt: skip
    finally:
        _end(cli)
    assert "Traceback" not in cli.output, cli.output
    _assert_nothing_left(state)
