"""``python -m driftwheel ui`` serves both UIs on the embedded default and leaves nothing behind."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return None


def _json(url: str, body: dict | None = None, headers: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_ui_serves_airflow_and_mlflow_and_sigterm_stops_everything(tmp_path: Path) -> None:
    api_port, mlflow_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "include"), os.environ.get("PYTHONPATH")])),
        "FLYWHEEL_STATE_DIR": str(tmp_path / "state"),
    }
    env.pop("FLYWHEEL_AIRFLOW_DB_URI", None)
    env.pop("FLYWHEEL_MLFLOW_DB_URI", None)
    cli = subprocess.Popen(
        [sys.executable, "-m", "driftwheel", "--api-port", str(api_port), "ui", "--mlflow-port", str(mlflow_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert cli.poll() is None, cli.stdout.read() if cli.stdout else ""
            airflow = _status(f"http://127.0.0.1:{api_port}/api/v2/monitor/health")
            mlflow = _status(f"http://127.0.0.1:{mlflow_port}/health")
            # Without mlflow[auth] (Flask-WTF) `ui` serves no MLflow UI rather than one without a login.
            if airflow == 200 and (mlflow == 200 or importlib.util.find_spec("flask_wtf") is None):
                break
            time.sleep(2)
        else:
            pytest.fail("the UIs did not come up within 300 s")
        started = psutil.Process(cli.pid).children(recursive=True)
        assert len(started) > 3  # postgres, api-server, scheduler, dag-processor, mlflow, ...
        # The project's plugin is loaded: the Flywheel menu and the timeline page (no period yet).
        password = json.loads((tmp_path / "state" / "passwords.json").read_text())["admin"]
        token = _json(f"http://127.0.0.1:{api_port}/auth/token", {"username": "admin", "password": password})
        bearer = {"Authorization": f"Bearer {token['access_token']}"}
        plugins = _json(f"http://127.0.0.1:{api_port}/api/v2/plugins", headers=bearer)["plugins"]
        assert [p["name"] for p in plugins] == ["flywheel_links"]
        assert "Timeline" in {v["name"] for v in plugins[0]["external_views"]}
        request = urllib.request.Request(f"http://127.0.0.1:{api_port}/flywheel/timeline", headers=bearer)
        with urllib.request.urlopen(request, timeout=120) as page:
            assert "the flywheel over time</h1>" in page.read().decode()
    finally:
        cli.send_signal(signal.SIGTERM)
        output, _ = cli.communicate(timeout=120)

    _, alive = psutil.wait_procs(started, timeout=30)
    for leftover in alive:  # don't leave them to the next test, whatever the verdict
        leftover.kill()
    assert cli.returncode == 128 + signal.SIGTERM, output
    assert f"Timeline:   http://127.0.0.1:{api_port}/flywheel/timeline" in output
    assert not alive, [" ".join(p.cmdline()[:3]) for p in alive if p.is_running()]
    assert _status(f"http://127.0.0.1:{api_port}/api/v2/monitor/health") is None
    assert _status(f"http://127.0.0.1:{mlflow_port}/health") is None
