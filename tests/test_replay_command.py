"""``python -m driftwheel replay`` run as a user types it: no Airflow, the demo's table, its own state."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tracks import make_tracks

REPO = Path(__file__).resolve().parents[1]


def _driftwheel(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftwheel", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )


def _env(state: Path, **variables: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    return {**clean, "PYTHONPATH": str(REPO / "include"), "FLYWHEEL_STATE_DIR": str(state), **variables}


def _table(stdout: str) -> list[list[str]]:
    return [line.split(" | ") for line in stdout.splitlines() if line.startswith("| 20")]


def _columns(stdout: str) -> list[dict[str, str]]:
    """The table's rows as {header: cell}: tests name columns, so adding one breaks none."""
    lines = [line.strip().strip("|") for line in stdout.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.split("|")), strict=True)) for line in lines[1:]]


def test_replay_on_the_synthetic_source_prints_the_demos_table_from_its_own_state(tmp_path: Path) -> None:
    env = _env(tmp_path / "state", FLYWHEEL_ROWS_PER_YEAR="300", FLYWHEEL_WARMUP_END="2009")
    replayed = _driftwheel("replay", "--start", "2008", "--end", "2010", env=env)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr

    replay_state = tmp_path / "state" / "replay" / "synthetic"
    assert f"state directory: {replay_state}  (source: synthetic" in replayed.stdout
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["replay"]  # the demo's state is not touched
    assert "  2008: 300 rows, skip; champion none" in replayed.stdout  # progress, one line per year
    assert "  2009: 300 rows, retrain, challenger RMSE" in replayed.stdout
    rows = _table(replayed.stdout)
    assert [r[0] for r in rows] == ["| 2008", "| 2009", "| 2010"]
    cold_start, after = _columns(replayed.stdout)[1:3]
    assert (cold_start["decision (rule)"], cold_start["promoted"], cold_start["champion"]) == (
        "retrain (cold_start)",
        "yes",
        "v1",
    )
    assert int(cold_start["held-out n"]) > 0 and after["baseline RMSE"] != "-"  # the gate's held-out n; 2010's baseline
    assert "- held-out n: rows in that held-out split" in replayed.stdout  # the legend under the table
    assert cold_start["gate ΔRMSE [bounds]"].startswith("-") and cold_start["gate ΔRMSE [bounds]"].endswith("]")

    # The same table as `python -m driftwheel table` (the demo's formatter) reads from the replay's store.
    table = _driftwheel("table", env={**env, "FLYWHEEL_MLFLOW_TRACKING_URI": f"sqlite:///{replay_state / 'mlflow.db'}"})
    assert table.returncode == 0, table.stderr
    assert _table(table.stdout) == rows
    assert "- baseline RMSE: last year's mean popularity as the prediction" in table.stdout


def test_replay_on_a_csv_file_takes_its_years_from_the_file_and_never_writes_it(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    csv = landing / "my_tracks.csv"
    pd.concat([make_tracks(y, n=300, level=50 + y - 2010, seed=y) for y in (2010, 2011, 2012)]).to_csv(csv, index=False)
    digest = hashlib.sha256(csv.read_bytes()).hexdigest()
    env = _env(
        tmp_path / "state",
        FLYWHEEL_SOURCE="file",
        FLYWHEEL_LANDING_DIR=str(landing),
        FLYWHEEL_WARMUP_START="2010",
        FLYWHEEL_WARMUP_END="2011",
    )
    replayed = _driftwheel("replay", env=env)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert f"(source: file, {landing};" in replayed.stdout
    assert "replaying 2010-2012" in replayed.stdout
    rows = _table(replayed.stdout)
    assert [(r[0], r[1]) for r in rows] == [("| 2010", "300"), ("| 2011", "300"), ("| 2012", "300")]
    assert (_columns(replayed.stdout)[1]["decision (rule)"], _columns(replayed.stdout)[1]["promoted"]) == (
        "retrain (cold_start)",
        "yes",
    )
    assert hashlib.sha256(csv.read_bytes()).hexdigest() == digest

    # A year beyond the next one is refused with the reason, before it touches anything; exit 1.
    refused = _driftwheel("replay", "--start", "2014", "--end", "2015", env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "year 2014 failed: period 2014 is beyond the next period" in refused.stdout
    assert "not run: 2015" in refused.stdout
    assert not (tmp_path / "state" / "replay" / "file" / "curated" / "year=2014").exists()
    assert (tmp_path / "state" / "replay" / "file" / "curated" / "year=2012").exists()
