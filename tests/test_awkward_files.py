"""The files users really have, read through a column map of documented keys only.

Each awkward shape (Latin-1, semicolons and decimal commas, 0-100 features, seconds, no id column,
an empty first header, other column names) curates exactly what the clean file curates; a
Kaggle-shaped file with all of them at once, holding the years 2010-2013, runs the whole flywheel
(ingest, validate, drift, retrain, evaluate, promote). The landing files are never modified.
tests/e2e/test_flywheel_e2e.py runs one such file through the scheduler.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from awkward import SHAPES, clean_tracks, hashed_id, write_awkward
from badfiles import digest
from driftwheel import registry, steps, store
from driftwheel.config import Settings, load_column_map
from driftwheel.replay import replay
from driftwheel.sources.file import UnreadableFile
from driftwheel.validate import BatchRejected

DOC = Path(__file__).resolve().parents[1] / "docs" / "column-map.md"


def _documented_keys() -> set[str]:
    return set(re.findall(r"^## `([a-z_]+)`\s*$", DOC.read_text(encoding="utf-8"), flags=re.M))


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module's ingest-and-validate tests: creating one costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def settings(settings: Settings, tracking_uri: str) -> Settings:
    return dataclasses.replace(settings, mlflow_tracking_uri=tracking_uri)


def _with_map(settings: Settings, folder: Path, column_map: dict[str, Any]) -> Settings:
    """Settings reading ``folder`` through ``column_map`` (a file, as a user writes it), in their own state."""
    assert set(column_map) <= _documented_keys(), set(column_map) - _documented_keys()
    path = folder.parent / f"{folder.name}_columns.json"
    path.write_text(json.dumps(column_map, indent=1), encoding="utf-8")
    mine = dataclasses.replace(settings, state_dir=folder.parent / f"{folder.name}_state")
    return mine.with_file_source(landing_dir=folder, **load_column_map(path))


def _curate(settings: Settings, period: int) -> pd.DataFrame:
    steps.ingest_tracks(settings, period)
    steps.validate_tracks(settings, period)
    return store.read_partition(settings.curated_dir, period)


@pytest.mark.parametrize("shape", SHAPES)
def test_each_awkward_shape_curates_what_the_clean_file_curates(settings: Settings, tmp_path: Path, shape: str) -> None:
    frame = clean_tracks(2015, n=120)
    frame.to_csv(settings.landing_dir / "tracks.csv", index=False)
    expected = _curate(settings, 2015)

    folder = tmp_path / "awkward"
    folder.mkdir()
    path, column_map = write_awkward(folder, frame, (shape,), "export.csv")
    before = digest(path)
    curated = _curate(_with_map(settings, folder, column_map), 2015)

    if shape == "no-id":
        assert curated["track_id"].tolist() == [hashed_id(a, s) for a, s in zip(frame.artist_name, frame.song_name)]
        expected["track_id"] = curated["track_id"]
    pd.testing.assert_frame_equal(curated, expected, check_exact=False, rtol=1e-12)
    assert digest(path) == before


def test_without_its_column_map_an_awkward_file_fails_naming_file_column_rule_and_key(
    settings: Settings, tmp_path: Path
) -> None:
    frame = clean_tracks(2015, n=120)
    folder = tmp_path / "awkward"
    folder.mkdir()
    _, column_map = write_awkward(folder, frame, ("0-100", "seconds", "no-id"), "export.csv")

    # No id column: the rejection names the file and offers id_from.
    no_ids = {k: v for k, v in column_map.items() if k != "id_from"}
    with pytest.raises(BatchRejected, match=r"export.csv: required column 'track_id' is missing.*\"id_from\""):
        _curate(_with_map(settings, folder, no_ids), 2015)
    # An id_from column the file lacks: the file, the column and the key.
    with pytest.raises(
        UnreadableFile, match=r"^export.csv: column 'title' of \"id_from\" in the column map is missing"
    ):
        _curate(_with_map(settings, folder, {**column_map, "id_from": ["artist_name", "title"]}), 2015)
    # 0-100 features read as they are: file, line, column and rule, where the values lie and the keys to set.
    unscaled = {k: v for k, v in column_map.items() if k != "scale"}
    with pytest.raises(BatchRejected) as rejected:
        _curate(_with_map(settings, folder, unscaled), 2015)
    message = str(rejected.value)
    assert re.search(r"^export.csv line 2: danceability: in_range\(0.0, 1.0\)", message), message
    assert "Column map: 'danceability' lies in " in message and "'duration_ms' lies in " in message
    assert '{"duration_ms": {"multiply": 1000}} for seconds' in message and 'declare its "range"' in message

    # A declared range is what validation checks: 0-100 energy passes when its range says so.
    ranged = _with_map(
        settings,
        folder,
        {**unscaled, "scale": {"duration_ms": {"multiply": 1000}}, "range": dict.fromkeys(
            ["danceability", "energy", "speechiness", "acousticness", "instrumentalness", "liveness", "valence"],
            [0, 100],
        )},
    )  # fmt: skip
    assert _curate(ranged, 2015)["energy"].max() > 1


def test_a_label_outside_its_declared_range_is_quarantined(settings: Settings, tmp_path: Path) -> None:
    frame = clean_tracks(2015, n=120)
    folder = tmp_path / "labels"
    folder.mkdir()
    frame.to_csv(folder / "tracks.csv", index=False)
    top = frame["popularity"].max()
    narrow = _with_map(settings, folder, {"label_range": [0, float(top) - 1]})
    steps.ingest_tracks(narrow, 2015)
    result = steps.validate_tracks(narrow, 2015)
    assert result["quarantined"] == int((frame["popularity"] == top).sum()) > 0
    reasons = pd.read_csv(result["quarantine_path"])["reason"]
    assert set(reasons) == {f"popularity: in_range(0, {top - 1})"}


def test_a_kaggle_shaped_file_of_2010_2013_runs_the_whole_flywheel(settings: Settings, tmp_path: Path) -> None:
    # One Latin-1 file, semicolons, 0-100 features, seconds, no ids, an empty first header, Kaggle's
    # names and fewer features; its years start in 2010 and 2013's level jumps.
    frames = [clean_tracks(y, n=400, level=62 if y == 2013 else 52, seed=y) for y in (2010, 2011, 2012, 2013)]
    lacking = ["key", "mode", "instrumentalness", "time_signature"]
    frame = pd.concat(frames, ignore_index=True).drop(columns=lacking)
    folder = tmp_path / "kaggle"
    folder.mkdir()
    path, column_map = write_awkward(folder, frame, SHAPES, "top_songs.csv")
    features = [f for f in settings.dataset.features if f not in lacking]
    column_map["features"] = features
    column_map["scale"] = {k: v for k, v in column_map["scale"].items() if k in features}
    before = digest(path)
    kaggle = dataclasses.replace(_with_map(settings, folder, column_map), mlflow_tracking_uri=None)

    rows = replay(kaggle, [2010, 2011, 2012, 2013])

    assert [r.decision for r in rows][1::2] == ["retrain", "retrain"]
    assert [r.promoted for r in rows][1::2] == [True, True]
    assert rows[3].production_rmse > rows[3].challenger_rmse + 3
    client = registry.connect(kaggle.tracking_uri)
    champion = registry.champion(client, kaggle.model_name)
    inputs = set(registry.input_columns(client, champion))
    assert set(features) <= inputs and not inputs & set(lacking)
    curated = store.read_partition(kaggle.curated_dir, 2013)
    assert len(curated) == 400 and curated["energy"].between(0, 1).all() and curated["duration_ms"].min() >= 1000
    assert "Sigur Rós" in set(curated["artist_name"])
    assert digest(path) == before


def test_a_value_that_is_no_number_is_reported_as_read_and_a_changed_scale_reads_the_file_anew(
    settings: Settings, tmp_path: Path
) -> None:
    frame = clean_tracks(2015, n=120)
    folder = tmp_path / "percent"
    folder.mkdir()
    path, column_map = write_awkward(folder, frame, ("0-100",), "export.csv")
    text = path.read_text(encoding="utf-8").splitlines()
    energy = text[0].split(",").index("energy")
    cells = text[1].split(",")
    cells[energy] = "high"
    path.write_text("\n".join([text[0], ",".join(cells), *text[2:]]) + "\n", encoding="utf-8")

    scaled = _with_map(settings, folder, column_map)
    steps.ingest_tracks(scaled, 2015)
    result = steps.validate_tracks(scaled, 2015)
    assert result["quarantined"] == 1
    quarantined = pd.read_csv(result["quarantine_path"])
    assert quarantined.loc[0, "energy"] == "high" and quarantined.loc[0, "reason"].startswith("energy: ")
    assert store.read_partition(scaled.curated_dir, 2015)["energy"].max() <= 1

    # Same state, the scale of energy widened: the landing index must not serve the old rows.
    column_map["scale"]["energy"] = {"from": [0, 100], "to": [0, 2]}
    column_map["range"] = {"energy": [0, 2]}
    widened = _with_map(settings, folder, column_map)
    assert widened.state_dir == scaled.state_dir
    steps.ingest_tracks(widened, 2015)
    steps.validate_tracks(widened, 2015)
    assert store.read_partition(widened.curated_dir, 2015)["energy"].max() > 1
