"""Live mode: new landing files are counted once, and a retrain is due after enough labeled rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from driftwheel import live, sources
from driftwheel.config import FileSourceConfig, LivePolicy, Settings
from tracks import make_tracks


def _settings(tmp_path: Path, min_new_rows: int = 250) -> Settings:
    landing = tmp_path / "landing"
    landing.mkdir(exist_ok=True)
    return Settings(
        state_dir=tmp_path / "state",
        source="file",
        file_source=FileSourceConfig(landing_dir=landing),
        live=LivePolicy(min_new_rows=min_new_rows),
    )


def _drop(settings: Settings, name: str, year: int, n: int, unlabeled: int = 0, seed: int = 0) -> Path:
    frame = make_tracks(year, n=n, seed=seed)
    if unlabeled:
        frame.loc[frame.index[:unlabeled], "popularity"] = np.nan
    path = settings.landing_dir / name
    frame.to_csv(path, index=False)
    return path


def test_due_periods_is_a_threshold_per_period() -> None:
    policy = LivePolicy(min_new_rows=100)
    assert live.due_periods({2021: 99, 2022: 100, 2020: 250}, policy) == [2020, 2022]
    assert live.due_periods({}, policy) == []


def test_new_files_are_counted_once_and_a_retrain_is_due_after_enough_labeled_rows(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _drop(settings, "week_01.csv", 2021, 150, unlabeled=20)
    first = live.collect_new_tracks(settings, 2021)
    assert first == {"new_files": ["week_01.csv"], "new_rows": 130, "pending": {"2021": 130}}
    assert live.due_periods({2021: 130}, settings.live) == []

    # Nothing new: nothing counted again; a renamed copy of a known file is no new data either.
    shutil.copy(settings.landing_dir / "week_01.csv", settings.landing_dir / "week_01_copy.csv")
    again = live.collect_new_tracks(settings, 2021)
    assert again["new_files"] == [] and again["pending"] == {"2021": 130}

    _drop(settings, "week_02.csv", 2021, 100, seed=1)
    _drop(settings, "week_02_old.csv", 2019, 40, seed=2)
    second = live.collect_new_tracks(settings, 2021)
    assert sorted(second["new_files"]) == ["week_02.csv", "week_02_old.csv"]
    assert second["pending"] == {"2019": 40, "2021": 230}

    _drop(settings, "week_03.csv", 2021, 30, seed=3)
    pending = {int(p): n for p, n in live.collect_new_tracks(settings, 2021)["pending"].items()}
    assert live.due_periods(pending, settings.live) == [2021]

    announced = live.announce(settings, [2021])
    assert announced == {"periods": [2021], "rows": {"2021": 260}}
    # Announced rows are no longer pending; other periods keep theirs, and new rows start over.
    _drop(settings, "week_04.csv", 2021, 10, seed=4)
    assert live.collect_new_tracks(settings, 2021)["pending"] == {"2019": 40, "2021": 10}


def test_a_rewritten_file_counts_again(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _drop(settings, "tracks.csv", 2021, 50)
    live.collect_new_tracks(settings, 2021)
    live.announce(settings, [2021])
    _drop(settings, "tracks.csv", 2021, 80, seed=9)
    assert live.collect_new_tracks(settings, 2021)["pending"] == {"2021": 80}


def test_a_file_is_parsed_once_for_live_mode_and_the_yearly_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driftwheel.sources import file as file_source

    settings = _settings(tmp_path)
    _drop(settings, "week_01.csv", 2021, 50, unlabeled=5)
    parse = file_source._read
    parsed: list[str] = []
    monkeypatch.setattr(file_source, "_read", lambda path, source: parsed.append(path.name) or parse(path, source))
    assert live.collect_new_tracks(settings, 2021)["pending"] == {"2021": 45}
    assert len(sources.read_period(settings, 2021).frame) == 50  # what the yearly run's validation reads
    assert parsed == ["week_01.csv"]


def test_retrain_conf_points_the_yearly_dag_at_the_live_folder(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert live.retrain_conf(settings, 2021) == {
        "year": 2021,
        "source": "file",
        "landing_dir": str(settings.landing_dir),
    }
    synthetic = Settings(state_dir=tmp_path)
    assert live.retrain_conf(synthetic, 2021) == {"year": 2021, "source": "synthetic"}


def test_pulling_sources_land_the_year_before_scanning(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)  # synthetic: stands in for a Spotify pull
    collected = live.collect_new_tracks(settings, 2021)
    assert collected["new_files"] == ["tracks_2021.csv"]
    assert collected["pending"] == {"2021": settings.synthetic.rows_per_year}
    assert live.collect_new_tracks(settings, 2021)["new_files"] == []


def test_each_landing_folder_has_its_own_pending_rows(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _drop(settings, "a.csv", 2021, 60)
    live.collect_new_tracks(settings, 2021)
    other = Settings(
        state_dir=settings.state_dir, source="file", file_source=FileSourceConfig(landing_dir=tmp_path / "other")
    )
    (tmp_path / "other").mkdir()
    assert live.collect_new_tracks(other, 2021)["pending"] == {}
