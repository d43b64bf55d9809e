"""Which years ``make demo`` backfills, and with which warm-up: typed as a user types it, up to the
point where Airflow would start (the backfill itself is the e2e tests' part)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from driftwheel.config import Schedule, Settings, TrainingConfig
from driftwheel.sources.file import LandingError
from driftwheel_ops.cli import demo_years
from driftwheel_ops.replay_command import default_warmup, years_to_run
from tracks import make_tracks

REPO = Path(__file__).resolve().parents[1]


def _env(state: Path, **variables: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    return {**clean, "PYTHONPATH": str(REPO / "include"), "FLYWHEEL_STATE_DIR": str(state), **variables}


def _landing(tmp_path: Path, years: range) -> Path:
    landing = tmp_path / "landing"
    landing.mkdir()
    frames = [make_tracks(y, n=300, level=50 + y % 10, seed=y) for y in years]
    pd.concat(frames).to_csv(landing / "tracks.csv", index=False)
    return landing


def _file_settings(tmp_path: Path, landing: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", source="file").with_file_source(landing_dir=landing)


def test_make_demo_passes_start_and_end_to_the_command() -> None:
    def arguments(*variables: str) -> list[str]:
        """What `make demo ...` passes to `python -m driftwheel`: -n prints the recipe, -o leaves the
        venv as it is (`make test` has just installed it)."""
        made = subprocess.run(
            ["make", "-n", "-o", ".venv/bin/.installed", "demo", *variables],
            cwd=REPO, capture_output=True, text=True, check=True,
        )  # fmt: skip
        [line] = [line for line in made.stdout.splitlines() if "-m driftwheel" in line]
        return line.split()[line.split().index("driftwheel") + 1 :]

    assert arguments("START=2010", "END=2019") == ["demo", "--start", "2010", "--end", "2019"]
    assert arguments("END=2015") == ["demo", "--end", "2015"]
    assert arguments() == ["demo"]


def test_demo_help_documents_start_and_end() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "driftwheel", "demo", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    shown = " ".join(shown.split())  # argparse wraps to the terminal's width
    assert "--start START" in shown and "make demo START=..." in shown
    assert "--end END" in shown and "the file source's last year" in shown


def test_years_default_to_the_datas_years_and_else_to_2008_2020() -> None:
    assert years_to_run(None, None, [2010, 2011, 2013]) == [2010, 2011, 2012, 2013]
    assert years_to_run(2011, None, [2010, 2013]) == [2011, 2012, 2013]
    assert years_to_run(None, 2011, [2010, 2013]) == [2010, 2011]
    assert years_to_run(None, None, []) == list(range(2008, 2021))
    assert years_to_run(2012, 2010, [2010, 2013]) == []


def test_the_warmup_moves_to_the_datas_first_years_only_when_the_configured_ones_are_absent() -> None:
    configured = TrainingConfig(warmup_start=2008, warmup_end=2014)
    assert default_warmup([], configured) is None  # synthetic or Spotify: any year exists
    assert default_warmup(list(range(2010, 2020)), configured) is None  # 2010-2014 pooled as configured
    assert default_warmup([2014, 2015], configured) is None
    # As many years as configured (7), at most half of the data's.
    assert default_warmup(list(range(2015, 2021)), configured) == (2015, 2017)
    assert default_warmup(list(range(1990, 2006)), configured) == (1990, 1996)
    assert default_warmup([2020], configured) == (2020, 2020)
    assert default_warmup([2003, 2001, 2002], configured) == (2001, 2001)


def test_demo_years_of_a_file_are_its_years_with_the_warmup_said(tmp_path: Path) -> None:
    settings = _file_settings(tmp_path, _landing(tmp_path, range(2000, 2004)))
    plan = demo_years(settings, Schedule(), None, None)
    assert plan.years == [2000, 2001, 2002, 2003]
    # The DAG starts in 2008 by default: its first year moves back so that the backfill has runs.
    assert plan.overrides == {
        "FLYWHEEL_FIRST_YEAR": "2000", "FLYWHEEL_WARMUP_START": "2000", "FLYWHEEL_WARMUP_END": "2001"
    }  # fmt: skip
    assert plan.notes == [
        "warm-up: the configured years 2008-2014 are not in the data (2000-2003); pooling 2000-2001 before the "
        "first model instead (FLYWHEEL_WARMUP_START / FLYWHEEL_WARMUP_END choose others)"
    ]
    assert demo_years(settings, Schedule(), 2001, 2002).years == [2001, 2002]


def test_demo_years_keep_the_configured_warmup_when_the_data_has_it(tmp_path: Path) -> None:
    settings = _file_settings(tmp_path, _landing(tmp_path, range(2010, 2013)))
    plan = demo_years(settings, Schedule(), None, None)
    assert (plan.years, plan.overrides, plan.notes) == ([2010, 2011, 2012], {}, [])
    synthetic = Settings(state_dir=tmp_path / "state")
    assert demo_years(synthetic, Schedule(), None, None).years == list(range(2008, 2021))


def test_demo_years_refuse_a_file_source_without_rows(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LandingError, match=f"no landing file in {empty} matching '\\*' has rows with a year"):
        demo_years(_file_settings(tmp_path, empty), Schedule(), None, None)


def test_demo_on_an_unreadable_file_says_so_before_starting_airflow(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "top_songs.csv").write_bytes("year,title\n2010,Caf\xe9\n".encode("latin-1"))
    env = _env(tmp_path / "state", FLYWHEEL_SOURCE="file", FLYWHEEL_LANDING_DIR=str(landing))
    ran = subprocess.run(
        [sys.executable, "-m", "driftwheel", "demo", "--start", "2010", "--end", "2010"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "error: top_songs.csv: is not utf-8 text (byte 0xe9 on line 2)" in ran.stdout
    assert "Airflow is up" not in ran.stdout
    assert not (tmp_path / "state" / "airflow").exists() and not (tmp_path / "state" / "pg").exists()


def test_replay_of_years_before_the_configured_warmup_pools_the_datas_first_years(tmp_path: Path) -> None:
    landing = _landing(tmp_path, range(2000, 2004))
    env = _env(tmp_path / "state", FLYWHEEL_SOURCE="file", FLYWHEEL_LANDING_DIR=str(landing))
    ran = subprocess.run(
        [sys.executable, "-m", "driftwheel", "replay"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "warm-up: the configured years 2008-2014 are not in the data (2000-2003); pooling 2000-2001" in ran.stdout
    assert "  2000: 300 rows, skip; champion none" in ran.stdout
    # Without the change every year would wait for 2014: the first model comes at the warm-up's end.
    assert "  2001: 300 rows, retrain, challenger RMSE" in ran.stdout
