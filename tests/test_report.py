"""The per-year table, its legend and the timeline, read back from real MLflow period runs (SQLite store).

The runs are written with the functions the steps use (``period_run``, ``record``), one per outcome a
year can have: the first champion, a skip, a rejected challenger, a promotion and a failed year.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from driftwheel import registry, report

REPO = Path(__file__).resolve().parents[1]

# year -> (metrics, tags, status)
PERIODS: dict[int, tuple[dict[str, float], dict[str, object], str]] = {
    2010: (
        {"rows": 500, "challenger_rmse": 9.0, "baseline_rmse": 12.0, "holdout_rows": 100},
        {
            report.T_DECISION: "retrain",
            report.T_CHALLENGER: "1",
            report.T_GATE: "passed",
            report.T_PROMOTED: True,
            report.T_CHAMPION: "1",
        },
        "FINISHED",
    ),  # fmt: skip
    2011: (
        {
            "rows": 510,
            "drift_share": 0.1,
            "target_drift_score": 0.02,
            "production_rmse": 9.5,
            "baseline_production_rmse": 12.5,
        },
        {report.T_DECISION: "skip", report.T_TARGET_DRIFTED: False, report.T_PROMOTED: False, report.T_CHAMPION: "1"},
        "FINISHED",
    ),  # fmt: skip
    2012: (
        {
            "rows": 520,
            "drift_share": 0.5,
            "target_drift_score": 0.3,
            "production_rmse": 11.0,
            "baseline_production_rmse": 12.0,
            "challenger_rmse": 11.5,
            "baseline_rmse": 12.1,
            "holdout_rows": 104,
        },
        {
            report.T_DECISION: "retrain",
            report.T_TARGET_DRIFTED: True,
            report.T_CHALLENGER: "2",
            report.T_GATE: "rejected",
            report.T_PROMOTED: False,
            report.T_CHAMPION: "1",
        },
        "FINISHED",
    ),  # fmt: skip
    2013: (
        {
            "rows": 530,
            "drift_share": 0.6,
            "target_drift_score": 0.4,
            "production_rmse": 13.0,
            "baseline_production_rmse": 12.2,
            "challenger_rmse": 10.0,
            "baseline_rmse": 12.0,
            "holdout_rows": 106,
        },
        {
            report.T_DECISION: "retrain",
            report.T_TARGET_DRIFTED: True,
            report.T_CHALLENGER: "3",
            report.T_GATE: "passed",
            report.T_PROMOTED: True,
            report.T_CHAMPION: "3",
        },
        "FINISHED",
    ),  # fmt: skip
    2014: ({}, {}, "FAILED"),
}


def _record_periods(client: MlflowClient, experiment: str) -> None:
    for year, (metrics, tags, status) in PERIODS.items():
        run_id = report.period_run(client, experiment, year)
        report.record(client, run_id, metrics=metrics, tags=tags)
        client.set_terminated(run_id, status)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    # One store for the module: creating an MLflow SQLite schema takes seconds.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def rows(tracking_uri: str) -> list[report.PeriodRow]:
    client = registry.connect(tracking_uri)
    experiment = report.experiment_id(client, "driftwheel", None)
    _record_periods(client, experiment)
    return report.period_table(client, experiment)


def test_rows_carry_the_baseline_the_held_out_size_and_the_outcome(rows: list[report.PeriodRow]) -> None:
    assert [r.year for r in rows] == [2010, 2011, 2012, 2013, 2014]
    assert [r.outcome for r in rows] == ["promote", "skip", "reject", "promote", "failed"]
    by_year = {r.year: r for r in rows}
    assert by_year[2012].baseline_rmse == 12.0 and by_year[2012].heldout_rows == 104
    assert by_year[2011].heldout_rows is None and by_year[2011].challenger_rmse is None  # nothing was judged
    assert by_year[2010].baseline_rmse is None  # no year before it: no "last year's mean"


def test_the_table_has_a_column_per_legend_line(rows: list[report.PeriodRow]) -> None:
    table = report.format_table(rows).splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == [
        "year", "rows", "drift share", "target drift", "prod RMSE", "baseline RMSE",
        "decision (rule)", "challenger RMSE", "held-out n", "gate ΔRMSE [bounds]", "promoted", "champion",
    ]  # fmt: skip
    assert table[4] == "| 2012 | 520 | 0.50 | 0.30 * | 11.00 | 12.00 | retrain | 11.50 | 104 | - | no | v1 |"
    legend = report.format_legend().splitlines()
    assert [line.split(":")[0] for line in legend] == [f"- {h}" for h in header]


def test_the_timeline_shows_every_year_and_its_marker(rows: list[report.PeriodRow], tmp_path: Path) -> None:
    html_path, png_path = report.write_timeline(rows, tmp_path / "reports", "My catalogue")

    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html_path.read_text()
    assert "<h1>My catalogue: the flywheel over time</h1>" in page
    assert 'src="data:image/png;base64,' in page  # one self-contained file
    for year, outcome in ((2010, "promote"), (2011, "skip"), (2012, "reject"), (2014, "failed")):
        assert f'<tr id="year-{year}">' in page
        assert f'<td class="outcome {outcome}">{outcome}</td>' in page


def test_experiments_open_on_training_runs_in_the_mlflow_ui(tracking_uri: str) -> None:
    import mlflow

    # The installed MLflow UI reads this tag and knows this kind (it has no Python constant for them).
    ui = "".join(p.read_text() for p in (Path(mlflow.__file__).parent / "server/js/build/static/js").glob("main.*.js"))
    assert f'"{report.EXPERIMENT_KIND_TAG}"' in ui
    assert f'CUSTOM_MODEL_DEVELOPMENT="{report.EXPERIMENT_KIND}"' in ui
    client = registry.connect(tracking_uri)
    old = client.create_experiment("made-before-the-tag")  # an existing user's experiment
    for name in ("driftwheel", "made-before-the-tag"):
        experiment = report.experiment_id(client, name, None)
        assert client.get_experiment(experiment).tags[report.EXPERIMENT_KIND_TAG] == report.EXPERIMENT_KIND
    assert report.experiment_id(client, "made-before-the-tag", None) == old


def _cli(tmp_path: Path, tracking_uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "include"),
        "FLYWHEEL_STATE_DIR": str(tmp_path / "state"),
        "FLYWHEEL_MLFLOW_TRACKING_URI": tracking_uri,
        "FLYWHEEL_DAG_DISPLAY_NAME": "Top songs flywheel",
    }
    command = [sys.executable, "-m", "driftwheel", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_python_m_driftwheel_report_writes_the_timeline(
    rows: list[report.PeriodRow], tracking_uri: str, tmp_path: Path
) -> None:
    done = _cli(tmp_path, tracking_uri, "report")

    assert done.returncode == 0, done.stderr
    reports = tmp_path / "state" / "reports"
    assert done.stdout.splitlines() == [
        "timeline of 5 periods (2010-2014):",
        f"  {reports / 'timeline.html'}",
        f"  {reports / 'timeline.png'}",
    ]
    assert "<h1>Top songs flywheel: the flywheel over time</h1>" in (reports / "timeline.html").read_text()
    assert (reports / "timeline.png").stat().st_size > 10_000


def test_report_without_runs_says_what_to_do(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from driftwheel_ops import cli

    monkeypatch.setenv("FLYWHEEL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FLYWHEEL_MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("FLYWHEEL_EXPERIMENT", "nothing-ran-here")

    assert cli.main(["report"]) == 1
    out = capsys.readouterr().out
    assert "no periods have run yet in experiment 'nothing-ran-here'" in out and "make demo" in out
    assert not (tmp_path / "state" / "reports" / "timeline.html").exists()
