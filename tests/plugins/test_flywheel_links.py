"""The Airflow plugin plugins/flywheel_links.py: its navigation links and its /flywheel app.

Unit tests load the module as Airflow does (from its file) with Airflow pointed at an empty home.
The e2e-marked tests use the real services: Airflow's own api-server app on a throwaway SQLite
database (plugin discovery, mounting, login), and a real MLflow server (alias redirects).
"""

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
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
INCLUDE = REPO / "include"
HEAVY = {"mlflow", "torch", "pandas", "evidently", "fastapi", "airflow.api_fastapi"}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The plugin module, loaded from its file like Airflow's plugin manager does."""
    with pytest.MonkeyPatch.context() as mp:
        # Airflow reads its configuration on first import: an empty home, not ~/airflow.
        mp.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
        mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        spec = importlib.util.spec_from_file_location("flywheel_links", PLUGINS / "flywheel_links.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def _write_report(state: Path, year: int, body: str) -> None:
    folder = state / "reports" / f"year={year}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"drift_{year}_vs_{year - 3}-{year - 1}.html").write_text(f"<html><body>{body}</body></html>")


def _client(plugin: ModuleType, *, logged_in: bool = True, ui_url: str = "http://mlflow.test:5000"):
    """A client of the plugin's app mounted under its prefix, as the api-server mounts it."""
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = plugin.create_app(ui_url=ui_url)
    if logged_in:
        # Stands in for Airflow's login here; the real one is exercised by test_in_airflows_api_server.
        app.dependency_overrides[get_user] = lambda: object()
    root = FastAPI()
    root.mount(plugin.URL_PREFIX, app)
    return TestClient(root)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("FLYWHEEL_STATE_DIR", str(state))
    return state


# -- the module and the plugin class ------------------------------------------------------------
def test_importing_the_plugin_loads_nothing_heavy(tmp_path: Path) -> None:
    """Schedulers, workers and the dag-processor load plugins too: they must stay cheap there."""
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('flywheel_links', {str(PLUGINS / 'flywheel_links.py')!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "module.FlywheelLinksPlugin.external_views\n"
        f"print(json.dumps(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules)))\n"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "PYTHONPATH": str(INCLUDE)}
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_plugin_declares_the_views_and_the_app(plugin: ModuleType) -> None:
    from fastapi import FastAPI

    instance = plugin.FlywheelLinksPlugin()
    assert instance.name == "flywheel_links"
    assert instance.external_views == plugin.build_external_views()
    [app] = instance.fastapi_apps
    assert app["url_prefix"] == "/flywheel" and isinstance(app["app"], FastAPI)


def test_external_views_link_the_model_its_champion_and_the_latest_report(plugin: ModuleType) -> None:
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    env = {"FLYWHEEL_MODEL_NAME": "track popularity", "FLYWHEEL_MLFLOW_UI_URL": "http://mlflow.test:5000/"}
    views = {view["name"]: view for view in plugin.build_external_views(env)}
    for view in views.values():
        ExternalViewResponse.model_validate(view)  # the schema the Airflow UI reads them with
        if view["name"] != "Flywheel year":  # a tab of each run's page, not a menu entry
            assert view["destination"] == "nav" and view["category"] == "Flywheel"

    report = views["Latest drift report"]
    assert report["href"] == "/flywheel/reports/latest"
    assert report["url_route"] == "flywheel-drift-report"  # embedded in the Airflow UI

    model = views["track popularity in MLflow"]
    assert model["href"] == "http://mlflow.test:5000/#/models/track%20popularity"
    champion = views["Champion in MLflow"]
    assert champion["href"] == "/flywheel/models/champion"
    # MLflow refuses to be framed by another origin: its links open in a new tab.
    assert "url_route" not in model and "url_route" not in champion


def test_the_timeline_is_in_the_menu_and_on_every_run_page(plugin: ModuleType) -> None:
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    views = {view["name"]: view for view in plugin.build_external_views({})}
    timeline, year = views["Timeline"], views["Flywheel year"]
    assert (timeline["href"], timeline["destination"]) == ("/flywheel/timeline", "nav")
    # The Airflow UI fills in {DAG_ID} and {RUN_ID} of the run whose page shows the tab.
    assert (year["href"], year["destination"]) == ("/flywheel/runs/{DAG_ID}/{RUN_ID}", "dag_run")
    for view in (timeline, year):
        ExternalViewResponse.model_validate(view)
        assert "url_route" in view  # embedded in the Airflow UI, not a new tab


def test_a_runs_year_is_its_year_param_else_its_logical_dates(plugin: ModuleType) -> None:
    from datetime import datetime

    assert plugin.run_period({"year": 2012}, datetime(2020, 1, 1)) == 2012
    assert plugin.run_period({"year": None}, datetime(2019, 1, 1)) == 2019
    assert plugin.run_period(None, None) is None


def test_the_timeline_page_reads_the_mlflow_runs(
    plugin: ModuleType, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driftwheel import registry, report

    uri = f"sqlite:///{state.parent / 'mlflow.db'}"
    monkeypatch.setenv("FLYWHEEL_MLFLOW_TRACKING_URI", uri)
    client = registry.connect(uri)
    experiment = report.experiment_id(client, "driftwheel", None)
    for year, decision in ((2019, "skip"), (2020, "retrain")):
        run_id = report.period_run(client, experiment, year)
        report.record(client, run_id, metrics={"rows": 100}, tags={report.T_DECISION: decision})
    http = _client(plugin)

    page = http.get("/flywheel/timeline", params={"year": 2020})
    png = http.get("/flywheel/timeline.png")

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<tr id="year-2019"><td>2019</td>' in page.text
    assert '<tr id="year-2020" class="highlight">' in page.text
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


def test_a_year_page_links_the_years_drift_report(plugin: ModuleType) -> None:
    timeline = "<html><body><h1>t</h1></body></html>"
    page = plugin.year_page(2019, timeline, "/flywheel/reports/2019")
    assert '<a id="drift-report" href="/flywheel/reports/2019">Drift report of 2019</a>' in page
    assert page.index("drift-report") < page.index("<h1>")
    assert "No drift report for 2018" in plugin.year_page(2018, timeline, None)


def test_mlflow_ui_defaults_to_where_make_ui_serves_it(plugin: ModuleType) -> None:
    views = {view["name"]: view for view in plugin.build_external_views({})}
    assert views["spotify_popularity in MLflow"]["href"] == "http://127.0.0.1:5000/#/models/spotify_popularity"


# -- drift reports ------------------------------------------------------------------------------
def test_latest_report_is_the_highest_year(plugin: ModuleType, state: Path) -> None:
    _write_report(state, 2019, "report 2019")
    _write_report(state, 2020, "report 2020")
    (state / "reports" / "year=2021").mkdir()  # a run still writing its report
    (state / "reports" / "notes").mkdir()

    response = _client(plugin).get("/flywheel/reports/latest")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "report 2020" in response.text


def test_report_of_one_year(plugin: ModuleType, state: Path) -> None:
    _write_report(state, 2019, "report 2019")
    _write_report(state, 2020, "report 2020")
    client = _client(plugin)

    assert "report 2019" in client.get("/flywheel/reports/2019").text
    missing = client.get("/flywheel/reports/2018")
    assert missing.status_code == 404
    assert "No drift report for 2018" in missing.json()["detail"]


def test_report_index_lists_the_years_newest_first(plugin: ModuleType, state: Path) -> None:
    _write_report(state, 2019, "report 2019")
    _write_report(state, 2020, "report 2020")

    index = _client(plugin).get("/flywheel/reports").json()

    assert index["latest"] == 2020
    assert index["reports"] == [
        {"year": 2020, "url": "/flywheel/reports/2020"},
        {"year": 2019, "url": "/flywheel/reports/2019"},
    ]
    assert index["reports_dir"] == str(state / "reports")


def test_no_report_yet_is_a_404_that_says_where_reports_come_from(plugin: ModuleType, state: Path) -> None:
    client = _client(plugin)

    response = client.get("/flywheel/reports/latest")

    assert response.status_code == 404
    detail = response.json()["detail"]
    assert detail.startswith("No drift report yet")
    assert "report_drift" in detail and str(state / "reports") in detail
    assert client.get("/flywheel/reports").json() == {
        "reports_dir": str(state / "reports"),
        "latest": None,
        "reports": [],
    }


def test_the_app_requires_an_airflow_login(plugin: ModuleType, state: Path) -> None:
    _write_report(state, 2020, "report 2020")
    response = _client(plugin, logged_in=False).get("/flywheel/reports/latest")
    assert response.status_code == 401


def test_unreachable_mlflow_is_a_502(plugin: ModuleType, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    response = _client(plugin).get("/flywheel/models/champion", follow_redirects=False)
    assert response.status_code == 502
    assert "did not answer" in response.json()["detail"]


# -- with the real services ---------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server on 127.0.0.1 with model `plugin_test_model`, version 1 = champion."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        stdout=(root / "server.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"MLflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=url, registry_uri=url)
        client.create_registered_model("plugin_test_model")
        version = client.create_model_version("plugin_test_model", source="s3://bucket/plugin_test_model")
        client.set_registered_model_alias("plugin_test_model", "champion", version.version)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.e2e
def test_champion_link_redirects_to_its_version_in_the_mlflow_ui(
    plugin: ModuleType, mlflow_server: str, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_MODEL_NAME", "plugin_test_model")
    monkeypatch.setenv("FLYWHEEL_MLFLOW_TRACKING_URI", mlflow_server)  # how the api-server reaches it
    client = _client(plugin, ui_url="http://mlflow.test:5000")  # how a browser reaches it

    champion = client.get("/flywheel/models/champion", follow_redirects=False)
    assert champion.status_code == 307
    assert champion.headers["location"] == "http://mlflow.test:5000/#/models/plugin_test_model/versions/1"

    challenger = client.get("/flywheel/models/challenger", follow_redirects=False)
    assert challenger.status_code == 404
    assert "no 'challenger' alias" in challenger.json()["detail"]

    monkeypatch.setenv("FLYWHEEL_MODEL_NAME", "no_such_model")
    assert client.get("/flywheel/models/champion", follow_redirects=False).status_code == 404


@pytest.mark.e2e
def test_without_a_tracking_server_the_ui_server_answers_for_the_alias(
    plugin: ModuleType, mlflow_server: str, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make ui`: the tasks track into a database, and the MLflow UI server is the REST API."""
    monkeypatch.setenv("FLYWHEEL_MODEL_NAME", "plugin_test_model")
    monkeypatch.delenv("FLYWHEEL_MLFLOW_TRACKING_URI", raising=False)

    champion = _client(plugin, ui_url=mlflow_server).get("/flywheel/models/champion", follow_redirects=False)

    assert champion.status_code == 307
    assert champion.headers["location"] == f"{mlflow_server}/#/models/plugin_test_model/versions/1"


API_SERVER_CHECK = """
import json
from fastapi.testclient import TestClient
from airflow.api_fastapi.app import create_app

client = TestClient(create_app())
anonymous = client.get("/flywheel/reports/latest")
token = client.post("/auth/token", json={"username": "admin", "password": "pw-for-tests"}).json()["access_token"]
bearer = client.get("/flywheel/reports/latest", headers={"Authorization": f"Bearer {token}"})
client.cookies.set("_token", token)  # what the UI's iframe sends
cookie = client.get("/flywheel/reports/latest")
client.cookies.clear()
plugins = client.get("/api/v2/plugins", headers={"Authorization": f"Bearer {token}"}).json()["plugins"]
ours = [p for p in plugins if p["name"] == "flywheel_links"]
print(json.dumps({
    "anonymous": anonymous.status_code,
    "bearer": [bearer.status_code, bearer.text],
    "cookie": [cookie.status_code, cookie.text],
    "plugin": ours[0] if ours else None,
}))
"""


@pytest.mark.e2e
def test_in_airflows_api_server(tmp_path: Path) -> None:
    """Airflow finds the plugin in the plugins folder, mounts /flywheel behind its login and lists the views."""
    state = tmp_path / "state"
    _write_report(state, 2020, "report 2020")
    (tmp_path / "passwords.json").write_text(json.dumps({"admin": "pw-for-tests"}))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": "a-test-secret-" + "x" * 64,
        "FLYWHEEL_STATE_DIR": str(state),
        "PYTHONPATH": str(INCLUDE),
    }
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    out = subprocess.run(
        [sys.executable, "-c", API_SERVER_CHECK], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])

    assert result["anonymous"] == 401
    assert result["bearer"][0] == 200 and "report 2020" in result["bearer"][1]
    assert result["cookie"][0] == 200 and "report 2020" in result["cookie"][1]
    plugin_info = result["plugin"]
    assert plugin_info is not None, "Airflow did not load plugins/flywheel_links.py"
    assert [app["url_prefix"] for app in plugin_info["fastapi_apps"]] == ["/flywheel"]
    assert {view["name"] for view in plugin_info["external_views"]} == {
        "Timeline",
        "Flywheel year",
        "Latest drift report",
        "spotify_popularity in MLflow",
        "Champion in MLflow",
    }
