import pandas as pd
import pytest

from tracks import make_tracks
from driftwheel.config import DatasetSpec, ValidationPolicy
from driftwheel.sources.file import SOURCE_FILE, SOURCE_ROW, Batch
from driftwheel.validate import BatchRejected, validate_batch
from pathlib import Path


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
