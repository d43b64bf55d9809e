"""The flywheel in the Airflow UI: its timeline, the drift reports, links to the model in MLflow.

A "Flywheel" menu in the navigation bar (Airflow 3.1+ ``external_views``):

- *Timeline*: per year the champion's production RMSE against the baseline's, the challengers'
  held-out RMSE, drift, and the retrain / promote / reject / skip markers, read from the MLflow
  period runs (:mod:`driftwheel.report`), shown inside the Airflow UI;
- *Latest drift report*: the newest ``<state>/reports/year=YYYY/drift_YYYY_vs_<reference>.html``, shown inside
  the Airflow UI (an iframe on this plugin's own FastAPI app, so same origin and same login);
- *<model> in MLflow*: the registered model's page in the MLflow UI (new tab);
- *Champion in MLflow*: the version the ``champion`` alias points at. The MLflow UI has no alias
  route, so the link goes to ``/flywheel/models/champion``, which asks MLflow's REST API for the
  alias and redirects to ``#/models/<name>/versions/<n>``.

Each DAG run's page gets a *Flywheel year* tab (``destination: dag_run``): that year's drift
report next to the timeline with the year marked.

The FastAPI app, mounted by the api-server at ``/flywheel`` and open to logged-in users only:

- ``GET /flywheel/timeline`` (``?year=`` marks one), ``GET /flywheel/timeline.png``: the timeline;
- ``GET /flywheel/runs/{dag_id}/{run_id}``: the page of one DAG run's year;
- ``GET /flywheel/reports``: JSON index of the drift reports, newest year first;
- ``GET /flywheel/reports/latest``, ``GET /flywheel/reports/{year}``: a report's HTML;
- ``GET /flywheel/models/{alias}``: redirect to the MLflow UI page of the version behind an alias.

Configuration is the library's (:meth:`driftwheel.config.Settings.from_env`: ``FLYWHEEL_STATE_DIR``,
``FLYWHEEL_MODEL_NAME``, ``FLYWHEEL_MLFLOW_TRACKING_URI``), read per request, plus
``FLYWHEEL_MLFLOW_UI_URL``: where a *browser* reaches MLflow (default ``http://127.0.0.1:5000``,
where ``make ui`` serves it), read when the plugin loads.

Every Airflow process (scheduler, workers, dag-processor) loads plugins, so importing this module
costs nothing beyond the standard library and the flywheel's config: FastAPI and Airflow's API
security are imported only when the api-server asks for ``fastapi_apps``; mlflow and matplotlib
only when a timeline is asked for; never torch.
"""

import functools
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from airflow.plugins_manager import AirflowPlugin
from driftwheel.config import Settings

# No `from __future__ import annotations` in this module: FastAPI evaluates the endpoints'
# annotations at runtime, and they name classes imported inside create_app().

if TYPE_CHECKING:
    from fastapi import FastAPI

URL_PREFIX = "/flywheel"
CATEGORY = "Flywheel"
DEFAULT_MLFLOW_UI_URL = "http://127.0.0.1:5000"
# driftwheel.drift.drift_report writes drift_<year>_vs_<reference>.html, one per year folder.
REPORT_FILE = "drift_<year>_vs_<reference>.html"
_REPORT_GLOB = "drift_*.html"
MLFLOW_TIMEOUT_SECONDS = 5.0
_YEAR_DIR = re.compile(r"year=(\d{4})")


# -- links --------------------------------------------------------------------------------------
def mlflow_ui_url(env: Mapping[str, str] | None = None) -> str:
    """The MLflow UI's base URL as a browser sees it, without a trailing slash."""
    env = os.environ if env is None else env
    return (env.get("FLYWHEEL_MLFLOW_UI_URL") or DEFAULT_MLFLOW_UI_URL).rstrip("/")


def model_url(ui_url: str, model_name: str) -> str:
    """The MLflow UI page of a registered model."""
    return f"{ui_url}/#/models/{urllib.parse.quote(model_name, safe='')}"


def model_version_url(ui_url: str, model_name: str, version: str) -> str:
    """The MLflow UI page of one version of a registered model."""
    return f"{model_url(ui_url, model_name)}/versions/{urllib.parse.quote(version, safe='')}"


def build_external_views(env: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The plugin's entries in the UI's navigation bar.

    An entry with a ``url_route`` is embedded in the Airflow UI; one without opens in a new tab.
    MLflow's pages cannot be embedded (MLflow sends ``X-Frame-Options: SAMEORIGIN``).
    """
    model_name = Settings.from_env(env).model_name
    return [
        {
            "name": "Timeline",
            "href": f"{URL_PREFIX}/timeline",
            "url_route": "flywheel-timeline",
            "destination": "nav",
            "category": CATEGORY,
        },
        {
            # A tab on every DAG run's page; the UI fills in the run's DAG id and run id.
            "name": "Flywheel year",
            "href": f"{URL_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}",
            "url_route": "flywheel-year",
            "destination": "dag_run",
        },
        {
            "name": "Latest drift report",
            "href": f"{URL_PREFIX}/reports/latest",
            "url_route": "flywheel-drift-report",
            "destination": "nav",
            "category": CATEGORY,
        },
        {
            "name": f"{model_name} in MLflow",
            "href": model_url(mlflow_ui_url(env), model_name),
            "destination": "nav",
            "category": CATEGORY,
        },
        {
            "name": "Champion in MLflow",
            "href": f"{URL_PREFIX}/models/champion",
            "destination": "nav",
            "category": CATEGORY,
        },
    ]


# -- drift reports ------------------------------------------------------------------------------
def year_report(folder: Path) -> Path | None:
    """The drift report of a ``year=YYYY`` folder (the newest, should a rerun have left two); None without one."""
    found = [p for p in folder.glob(_REPORT_GLOB) if p.is_file()] if folder.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def list_reports(reports_dir: Path) -> list[tuple[int, Path]]:
    """``(year, path)`` of every ``year=YYYY/drift_*.html`` under ``reports_dir``, newest first.

    A missing folder, other folders and year folders without a report (a run still writing, or a
    failed one) are skipped.
    """
    if not reports_dir.is_dir():
        return []
    found = []
    for child in reports_dir.iterdir():
        match = _YEAR_DIR.fullmatch(child.name)
        report = year_report(child) if match else None
        if match and report is not None:
            found.append((int(match.group(1)), report))
    return sorted(found, reverse=True)


# -- the timeline ------------------------------------------------------------------------------
def run_period(conf: Mapping[str, Any] | None, logical_date: Any) -> int | None:
    """The year a flywheel DAG run processes, as the DAG decides it: its ``year`` param, else its
    logical date's year; None for a run with neither (a manual run without a year)."""
    year = (conf or {}).get("year")
    if year:
        return int(year)
    return None if logical_date is None else int(logical_date.year)


def _timeline_rows(settings: Settings) -> list[Any]:
    """The per-year rows from the MLflow period runs (mlflow imported here, on first request)."""
    from driftwheel import registry, report

    client = registry.connect(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment_name)
    return [] if experiment is None else report.period_table(client, experiment.experiment_id)


def year_page(year: int, timeline: str, report_url: str | None) -> str:
    """A DAG run's year: a link to its drift report (or why there is none) above the timeline."""
    if report_url:
        link = f'<a id="drift-report" href="{report_url}">Drift report of {year}</a>'
    else:
        link = f'<span id="drift-report">No drift report for {year} (report_drift did not write one)</span>'
    nav = f'<p style="font-family: system-ui, sans-serif; margin: 1rem 2rem 0">Year {year}: {link}</p>'
    return timeline.replace("<body>", "<body>\n" + nav, 1)


# -- MLflow aliases -----------------------------------------------------------------------------
def mlflow_api_url(settings: Settings, ui_url: str) -> str:
    """Where this server reaches MLflow's REST API: the tasks' tracking server if it is one
    (``http://mlflow:5000`` in Docker), else the UI's server (``make ui`` serves both)."""
    uri = settings.mlflow_tracking_uri or ""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else ui_url


def resolve_alias(api_url: str, model_name: str, alias: str) -> str | None:
    """The version number ``alias`` points at, or None when the model or the alias does not exist.

    Raises :class:`OSError` (``urllib.error.URLError``) when MLflow does not answer.
    """
    query = urllib.parse.urlencode({"name": model_name, "alias": alias})
    url = f"{api_url}/api/2.0/mlflow/registered-models/alias?{query}"
    try:
        with urllib.request.urlopen(url, timeout=MLFLOW_TIMEOUT_SECONDS) as response:
            return str(json.load(response)["model_version"]["version"])
    except urllib.error.HTTPError as err:
        # MLflow answers 404 RESOURCE_DOES_NOT_EXIST for an unknown model and
        # 400 INVALID_PARAMETER_VALUE for an unknown alias.
        if err.code in (400, 404):
            return None
        raise


# -- the FastAPI app ----------------------------------------------------------------------------
def create_app(ui_url: str | None = None) -> "FastAPI":
    """The ``/flywheel`` app: drift reports from the state folder, redirects to MLflow."""
    from airflow.api_fastapi.core_api.security import requires_authenticated
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi import Path as PathParam
    from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

    ui_url = ui_url or mlflow_ui_url()
    app = FastAPI(
        title="driftwheel",
        description="Drift reports and MLflow links of the data flywheel.",
        dependencies=[Depends(requires_authenticated())],
    )

    def no_report(settings: Settings, year: int | None = None) -> HTTPException:
        what = f"for {year}" if year is not None else "yet"
        return HTTPException(
            status_code=404,
            detail=f"No drift report {what}: the flywheel's report_drift task writes one per year to "
            f"{settings.reports_dir}/year=<YYYY>/{REPORT_FILE}.",
        )

    @app.get("/reports")
    def report_index(request: Request) -> dict[str, Any]:
        settings = Settings.from_env()
        reports = list_reports(settings.reports_dir)
        return {
            "reports_dir": str(settings.reports_dir),
            "latest": reports[0][0] if reports else None,
            "reports": [{"year": year, "url": request.url_for("report", year=year).path} for year, _ in reports],
        }

    # Declared before /reports/{year} so that "latest" is not read as a year.
    @app.get("/reports/latest", response_class=FileResponse)
    def latest_report() -> FileResponse:
        settings = Settings.from_env()
        reports = list_reports(settings.reports_dir)
        if not reports:
            raise no_report(settings)
        return FileResponse(reports[0][1], media_type="text/html")

    @app.get("/reports/{year}", response_class=FileResponse, name="report")
    def report(year: int) -> FileResponse:
        settings = Settings.from_env()
        path = year_report(settings.reports_dir / f"year={year}")
        if path is None:
            raise no_report(settings, year)
        return FileResponse(path, media_type="text/html")

    def timeline_page(year: int | None) -> str:
        from driftwheel import report
        from driftwheel.config import Schedule

        rows = _timeline_rows(Settings.from_env())
        title = Schedule.from_env().display_name
        return report.timeline_html(rows, report.timeline_png(rows, title), title, highlight=year)

    @app.get("/timeline", response_class=HTMLResponse)
    def timeline(year: int | None = None) -> HTMLResponse:
        return HTMLResponse(timeline_page(year))

    @app.get("/timeline.png", response_class=Response)
    def timeline_png() -> Response:
        from driftwheel import report
        from driftwheel.config import Schedule

        rows = _timeline_rows(Settings.from_env())
        return Response(report.timeline_png(rows, Schedule.from_env().display_name), media_type="image/png")

    @app.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse)
    def run_year(dag_id: str, run_id: str, request: Request) -> HTMLResponse:
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        from sqlalchemy import select

        # The api-server's own metadata session, as Airflow's endpoints read a run.
        with create_session() as session:
            run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
            if run is None:
                raise HTTPException(status_code=404, detail=f"No run {run_id!r} of DAG {dag_id!r}.")
            year = run_period(run.conf, run.logical_date)
        if year is None:
            raise HTTPException(status_code=404, detail=f"Run {run_id!r} has no year (no logical date, no year param).")
        has_report = year_report(Settings.from_env().reports_dir / f"year={year}") is not None
        report_url = request.url_for("report", year=year).path if has_report else None
        return HTMLResponse(year_page(year, timeline_page(year), report_url))

    @app.get("/models/{alias}", response_class=RedirectResponse)
    def model_alias(alias: Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{1,255}$")]) -> RedirectResponse:
        settings = Settings.from_env()
        api_url = mlflow_api_url(settings, ui_url)
        try:
            version = resolve_alias(api_url, settings.model_name, alias)
        except OSError as err:
            raise HTTPException(status_code=502, detail=f"MLflow at {api_url} did not answer: {err}") from err
        if version is None:
            raise HTTPException(
                status_code=404,
                detail=f"Registered model {settings.model_name!r} has no {alias!r} alias in MLflow at "
                f"{api_url} (no version has been promoted to it yet).",
            )
        return RedirectResponse(model_version_url(ui_url, settings.model_name, version))

    return app


@functools.cache
def _app() -> "FastAPI":
    return create_app()


class FlywheelLinksPlugin(AirflowPlugin):
    name = "flywheel_links"
    external_views = build_external_views()

    @property  # type: ignore[override]
    def fastapi_apps(self) -> list[dict[str, Any]]:
        # Built on first access, which only the api-server makes: the other processes that load
        # plugins never import FastAPI or the API's security module.
        return [{"app": _app(), "url_prefix": URL_PREFIX, "name": "flywheel"}]
