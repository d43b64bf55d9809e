import pandas as pd
import pytest

from tracks import make_tracks
from driftwheel.config import DatasetSpec, ValidationPolicy
from driftwheel.sources.file import SOURCE_FILE, SOURCE_ROW, Batch
from driftwheel.validate import BatchRejected, require_features, validate_batch
from pathlib import Path

SEED_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "spotify_seed" / "tracks_2008_2019.csv"


def _batch(frame: pd.DataFrame) -> Batch:
    """The batch of one CSV file: the header is line 1, row i is on line i + 2."""
    frame = frame.assign(**{SOURCE_FILE: "tracks_2015.csv", SOURCE_ROW: range(2, len(frame) + 2)})
    return Batch(2015, frame, (Path("tracks_2015.csv"),))


def test_clean_batch_passes_whole() -> None:
    result = validate_batch(_batch(make_tracks(2015)), DatasetSpec(), ValidationPolicy())
    assert len(result.valid) == 200 and result.quarantined.empty
    assert SOURCE_FILE not in result.valid.columns


def test_bad_rows_are_quarantined_with_their_rule() -> None:
    frame = make_tracks(2015)
    frame.loc[3, "energy"] = 1.7
    frame.loc[4, "tempo"] = 0
    frame.loc[5, "track_id"] = frame.loc[6, "track_id"]
    result = validate_batch(_batch(frame), DatasetSpec(), ValidationPolicy(max_bad_share=0.05))
    reasons = dict(zip(result.quarantined[SOURCE_ROW], result.quarantined["reason"]))
    assert reasons[5].startswith("energy: in_range")
    assert reasons[6].startswith("tempo: greater_than")
    # The second occurrence of a duplicated id, naming the first one's line.
    assert reasons[8] == "track_id: unique (duplicate of tracks_2015.csv line 7)"
    assert len(result.valid) == 197


def test_unparsable_value_is_quarantined_not_fatal() -> None:
    frame = make_tracks(2015)
    frame["loudness"] = frame["loudness"].astype(object)
    frame.loc[0, "loudness"] = "loud"
    result = validate_batch(_batch(frame), DatasetSpec(), ValidationPolicy())
    assert result.quarantined["reason"].iloc[0].startswith("loudness: coerce_dtype")


def test_missing_required_column_rejects_naming_file_and_column() -> None:
    with pytest.raises(BatchRejected, match=r"tracks_2015.csv: required column 'energy' is missing"):
        validate_batch(_batch(make_tracks(2015).drop(columns="energy")), DatasetSpec(), ValidationPolicy())


def test_missing_optional_feature_is_left_out() -> None:
    result = validate_batch(_batch(make_tracks(2015).drop(columns="time_signature")), DatasetSpec(), ValidationPolicy())
    assert "time_signature" not in result.features and len(result.valid) == 200


def test_too_many_bad_rows_rejects_with_file_line_column_and_rule() -> None:
    frame = make_tracks(2015)
    frame.loc[:30, "popularity"] = 140
    with pytest.raises(BatchRejected) as err:
        validate_batch(_batch(frame), DatasetSpec(), ValidationPolicy(max_bad_share=0.05))
    message = str(err.value)
    assert "tracks_2015.csv line 2: popularity: in_range(0, 100)" in message
    assert "popularity: in_range(0, 100)" in message and "rejected" in message


@pytest.mark.parametrize(
    ("column", "value", "rule"),
    [
        ("tempo", float("inf"), "tempo: finite"),
        ("tempo", float("-inf"), "tempo: finite"),
        ("energy", float("inf"), "energy: finite"),
        ("duration_ms", float("inf"), "duration_ms: finite"),
        ("popularity", float("-inf"), "popularity: finite"),
        ("key", 3.7, "key: integer"),
        ("mode", 0.5, "mode: integer"),
        ("time_signature", 4.2, "time_signature: integer"),
        ("duration_ms", 215_000.5, "duration_ms: integer"),
        ("duration_ms", 1e15, "duration_ms: in_range"),
        ("duration_ms", 215, "duration_ms: in_range"),  # seconds written as milliseconds
        ("tempo", 301.0, "tempo: less_than_or_equal_to(300"),
    ],
)
def test_non_finite_fractional_and_implausible_values_are_bad_rows(column: str, value: float, rule: str) -> None:
    frame = make_tracks(2015)
    frame[column] = frame[column].astype(float)
    frame.loc[3, column] = value
    result = validate_batch(_batch(frame), DatasetSpec(), ValidationPolicy())
    assert result.quarantined[SOURCE_ROW].tolist() == [5]
    assert result.quarantined["reason"].iloc[0].startswith(rule)
    assert len(result.valid) == 199 and frame.loc[3, "track_id"] not in set(result.valid["track_id"])
    assert result.valid[column].map(lambda v: v == v and abs(v) != float("inf")).all()


def test_integer_features_are_curated_as_integers_never_truncated() -> None:
    frame = make_tracks(2015)
    frame["key"] = frame["key"].astype(float)
    frame.loc[0, "key"] = 3.7
    result = validate_batch(_batch(frame), DatasetSpec(), ValidationPolicy())
    for column in ("key", "mode", "time_signature", "duration_ms"):
        assert str(result.valid[column].dtype) == "int64"
    assert result.valid["key"].tolist() == frame["key"].iloc[1:].astype(int).tolist()


def test_an_unparsable_value_does_not_hide_a_bad_value_in_the_same_column() -> None:
    frame = make_tracks(2015)
    frame["tempo"] = frame["tempo"].astype(object)
    frame.loc[0, "tempo"] = "fast"
    frame.loc[1, "tempo"] = float("inf")
    result = validate_batch(_batch(frame), DatasetSpec(), ValidationPolicy())
    reasons = dict(zip(result.quarantined[SOURCE_ROW], result.quarantined["reason"]))
    assert reasons[2].startswith("tempo: coerce_dtype") and reasons[3].startswith("tempo: finite")
    assert len(result.valid) == 198


def test_duplicate_ids_across_files_name_both_files_and_lines() -> None:
    first, second = make_tracks(2015, n=100), make_tracks(2015, n=100, seed=1)
    second.loc[10, "track_id"] = first.loc[40, "track_id"]
    frame = pd.concat(
        [
            first.assign(**{SOURCE_FILE: "a.csv", SOURCE_ROW: range(2, 102)}),
            second.assign(**{SOURCE_FILE: "b.csv", SOURCE_ROW: range(2, 102)}),
        ],
        ignore_index=True,
    )
    result = validate_batch(Batch(2015, frame, (Path("a.csv"), Path("b.csv"))), DatasetSpec(), ValidationPolicy())
    bad = result.quarantined.iloc[0]
    assert (bad[SOURCE_FILE], bad[SOURCE_ROW]) == ("b.csv", 12)
    assert bad["reason"] == "track_id: unique (duplicate of a.csv line 42)"


def test_a_rejected_batch_carries_its_bad_rows_for_quarantine() -> None:
    frame = make_tracks(2015)
    frame.loc[:30, "tempo"] = float("inf")
    with pytest.raises(BatchRejected) as err:
        validate_batch(_batch(frame), DatasetSpec(), ValidationPolicy())
    assert str(err.value).startswith("tracks_2015.csv line 2: tempo: finite")
    assert err.value.quarantined[SOURCE_ROW].tolist() == list(range(2, 33))
    assert err.value.quarantined["reason"].str.startswith("tempo: finite").all()


def test_require_features_names_the_missing_feature_and_the_champion() -> None:
    require_features(["energy", "danceability", "year"], ("energy", "year"), "3")
    with pytest.raises(BatchRejected, match=r"'danceability'.*champion \(version 3\)"):
        require_features(["energy", "year"], ("energy", "danceability", "year"), "3")


@pytest.mark.skipif(not SEED_CSV.exists(), reason="the shared Spotify sample is not on this machine")
def test_the_real_spotify_sample_stays_valid_under_the_bounds() -> None:
    seed = pd.read_csv(SEED_CSV)
    for year, rows in seed.groupby("year"):
        rows = rows.reset_index(drop=True).assign(**{SOURCE_FILE: SEED_CSV.name, SOURCE_ROW: rows.index + 2})
        result = validate_batch(Batch(int(year), rows, (SEED_CSV,)), DatasetSpec(), ValidationPolicy())
        # The sample's few bad rows are its tempo-0 tracks, as before the bounds.
        assert result.quarantined["reason"].str.startswith("tempo: greater_than").all(), year


def test_missing_id_names_the_column_with_an_empty_header_and_the_map_that_uses_it(tmp_path: Path) -> None:
    from driftwheel.config import FileSourceConfig
    from driftwheel.sources.file import read_period

    landing = tmp_path / "landing"
    landing.mkdir()
    # A saved pandas index: the first header is empty, the rows are numbered; no track_id column.
    make_tracks(2015).drop(columns="track_id").to_csv(landing / "top_songs.csv", index=True)
    assert (landing / "top_songs.csv").read_text().startswith(",year,")
    batch = read_period(FileSourceConfig(), DatasetSpec(), landing, 2015)
    with pytest.raises(BatchRejected) as err:
        validate_batch(batch, DatasetSpec(), ValidationPolicy())
    assert str(err.value) == (
        "top_songs.csv: required column 'track_id' is missing (rule: required_column; all missing: track_id); "
        "batch 2015 rejected; column 'Unnamed: 0' is one whose header is empty in the file: if it holds "
        'track_id, name it in the column map: "columns": {"Unnamed: 0": "track_id"}; a file without ids can '
        'have them made from other columns: "id_from": ["artist_name", "song_name"]'
    )
    # Both pieces of advice work as given.
    for source in (
        FileSourceConfig(column_map={"Unnamed: 0": "track_id"}),
        FileSourceConfig(id_from=("artist_name", "song_name")),
    ):
        mapped = read_period(source, DatasetSpec(), landing, 2015)
        assert len(validate_batch(mapped, DatasetSpec(), ValidationPolicy()).valid) == 200
    # Without an empty header only the id_from advice is given.
    with pytest.raises(BatchRejected) as plain:
        validate_batch(_batch(make_tracks(2015).drop(columns="track_id")), DatasetSpec(), ValidationPolicy())
    assert str(plain.value).endswith(
        'batch 2015 rejected; a file without ids can have them made from other columns: "id_from": ["artist_name", "song_name"]'
    )
