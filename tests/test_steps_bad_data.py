"""Bad data is refused at the door: ingest_tracks and validate_tracks on the files users really have.

Landing files are never modified, and nothing of a refused batch reaches the curated data.
"""

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from badfiles import UNREADABLE, digest, digests, write_csv, write_latin1_csv, write_swapped_columns_csv
from tracks import land, make_tracks
from driftwheel import steps, store
from driftwheel.config import ColumnMapError, DataError, Settings, load_column_map
from driftwheel.replay import replay
from driftwheel.sources.file import UnreadableFile
from driftwheel.validate import BatchRejected


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_an_unreadable_file_fails_ingest_of_every_year_by_name(settings: Settings, kind: str) -> None:
    land(settings, 2015, make_tracks(2015, n=50))
    land(settings, 2016, make_tracks(2016, n=50))
    writer, fix = UNREADABLE[kind]
    bad = writer(settings.landing_dir, make_tracks(2017, n=50))
    before = digests(settings.landing_dir)
    for year in (2015, 2016):
        with pytest.raises(UnreadableFile, match=rf"^{bad.name}: .*{fix}.*blocks every year") as err:
            steps.ingest_tracks(settings, year)
        assert isinstance(err.value, DataError)
    assert digests(settings.landing_dir) == before
    assert not settings.curated_dir.exists()


def test_the_encoding_option_of_the_column_map_makes_a_latin1_file_usable(settings: Settings, tmp_path: Path) -> None:
    frame = make_tracks(2015, n=50)
    write_latin1_csv(settings.landing_dir, frame, "export.csv")
    with pytest.raises(UnreadableFile, match='"encoding": "latin-1"'):
        steps.ingest_tracks(settings, 2015)
    column_map = tmp_path / "my_columns.json"
    column_map.write_text(json.dumps({"encoding": "latin-1"}))
    fixed = settings.with_file_source(**load_column_map(column_map))
    assert steps.ingest_tracks(fixed, 2015)["files"] == ["export.csv"]
    assert steps.validate_tracks(fixed, 2015)["rows"] == 50
    curated = store.read_partition(fixed.curated_dir, 2015)
    assert set(curated["artist_name"]) >= {"Beyoncé", "Sigur Rós"}


def test_a_rename_of_a_missing_column_names_the_map_file_and_key(settings: Settings, tmp_path: Path) -> None:
    land(settings, 2015, make_tracks(2015, n=50))
    column_map = tmp_path / "my_columns.json"
    column_map.write_text(json.dumps({"columns": {"track_popularity": "popularity"}}))
    env = {
        "FLYWHEEL_STATE_DIR": str(settings.state_dir),
        "FLYWHEEL_SOURCE": "file",
        "FLYWHEEL_LANDING_DIR": str(settings.landing_dir),
        "FLYWHEEL_COLUMN_MAP": str(column_map),
    }
    with pytest.raises(ColumnMapError, match=r"my_columns.json: key 'columns.track_popularity': no landing file"):
        steps.ingest_tracks(Settings.from_env(env), 2015)


def test_non_finite_fractional_and_implausible_values_are_quarantined_never_curated(settings: Settings) -> None:
    frame = make_tracks(2015)
    for column in ("tempo", "popularity", "key", "duration_ms"):
        frame[column] = frame[column].astype(float)
    frame.loc[0, "tempo"] = float("inf")
    frame.loc[1, "popularity"] = float("-inf")
    frame.loc[2, "key"] = 3.7
    frame.loc[3, "duration_ms"] = 1e15
    path = land(settings, 2015, frame)
    before = digest(path)
    steps.ingest_tracks(settings, 2015)
    result = steps.validate_tracks(settings, 2015)
    assert result["rows"] == 196 and result["quarantined"] == 4
    curated = store.read_partition(settings.curated_dir, 2015)
    assert not set(frame.loc[:3, "track_id"]) & set(curated["track_id"])
    assert str(curated["key"].dtype) == "int64" and curated["key"].tolist() == frame.loc[4:, "key"].astype(int).tolist()
    quarantine = pd.read_csv(result["quarantine_path"])
    assert quarantine["source_row"].tolist() == [2, 3, 4, 5]  # the file's lines: the header is line 1
    assert [r.split(":")[0] for r in quarantine["reason"]] == ["tempo", "popularity", "key", "duration_ms"]
    assert digest(path) == before


def test_a_rejected_batch_is_quarantined_and_leaves_the_curated_period_alone(settings: Settings) -> None:
    land(settings, 2015, make_tracks(2015))
    steps.validate_tracks(settings, 2015)
    curated = store.partition_path(settings.curated_dir, 2015)
    curated_before = digest(curated)
    late = make_tracks(2015, n=50, seed=5)
    late.loc[:20, "tempo"] = float("inf")
    path = write_csv(settings.landing_dir, late, "tracks_2015_late.csv")
    landing_before = digests(settings.landing_dir)
    with pytest.raises(BatchRejected, match=r"^tracks_2015_late.csv line 2: tempo: finite"):
        steps.validate_tracks(settings, 2015)
    quarantine = pd.read_csv(store.partition_path(settings.quarantine_dir, 2015, "rejected_rows.csv"))
    assert set(quarantine["source_file"]) == {path.name} and quarantine["source_row"].tolist() == list(range(2, 23))
    assert digest(curated) == curated_before
    assert digests(settings.landing_dir) == landing_before


def test_a_duplicate_id_across_files_names_the_first_file_and_line(settings: Settings) -> None:
    first, second = make_tracks(2015, n=100), make_tracks(2015, n=100, seed=1)
    second.loc[10, "track_id"] = first.loc[40, "track_id"]
    write_csv(settings.landing_dir, first, "a.csv")
    write_csv(settings.landing_dir, second, "b.csv")
    result = steps.validate_tracks(settings, 2015)
    bad = pd.read_csv(result["quarantine_path"]).iloc[0]
    assert (bad["source_file"], bad["source_row"]) == ("b.csv", 12)
    assert bad["reason"] == "track_id: unique (duplicate of a.csv line 42)"


def test_a_batch_lacking_a_feature_of_the_champion_is_rejected_at_validation(settings: Settings) -> None:
    for year in (2010, 2011):
        land(settings, year, make_tracks(year, n=300, seed=year))
    replay(settings, [2010, 2011])  # 2011 trains the first champion (warm-up ends there)
    without = [f for f in settings.dataset.features if f != "danceability"]
    settings = dataclasses.replace(settings, dataset=dataclasses.replace(settings.dataset, features=tuple(without)))
    land(settings, 2012, make_tracks(2012, n=300).drop(columns="danceability"))
    expected = r"^2012 batch \(tracks_2012.csv\) lacks column\(s\) 'danceability' that the champion \(version 1\)"
    with pytest.raises(BatchRejected, match=expected):
        steps.validate_tracks(settings, 2012)
    assert not store.has_partition(settings.curated_dir, 2012)


def test_swapped_columns_reject_the_batch_naming_file_line_column_and_rule(settings: Settings) -> None:
    path = write_swapped_columns_csv(settings.landing_dir, make_tracks(2015, n=50))
    before = digest(path)
    with pytest.raises(BatchRejected, match=r"^swapped.csv line 2: energy: in_range\(0.0, 1.0\) \(column: rule\)"):
        steps.validate_tracks(settings, 2015)
    assert len(pd.read_csv(store.partition_path(settings.quarantine_dir, 2015, "rejected_rows.csv"))) == 50
    assert not store.has_partition(settings.curated_dir, 2015) and digest(path) == before
