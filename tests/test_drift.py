from pathlib import Path

import numpy as np

from tracks import make_tracks
from driftwheel.config import SPOTIFY_AUDIO_FEATURES, DriftPolicy
from driftwheel.drift import drift_report, reference_periods, sample_rows
from driftwheel.evaluate import holdout_mask


def test_shifted_feature_and_label_are_flagged(tmp_path: Path) -> None:
    reference = make_tracks(2010, n=1500)
    current = make_tracks(2011, n=1500, level=58, shift=0.25)
    result = drift_report(current, reference, SPOTIFY_AUDIO_FEATURES, "popularity", tmp_path)
    assert result.column_drifted["danceability"]
    assert not result.column_drifted["tempo"]
    assert result.target_drifted
    assert result.drifted_columns == sum(result.column_drifted.values())
    assert result.html_path.stat().st_size > 10_000 and result.json_path.exists()


def test_same_distribution_is_stable(tmp_path: Path) -> None:
    result = drift_report(
        make_tracks(2011, n=1500, seed=1), make_tracks(2010, n=1500), SPOTIFY_AUDIO_FEATURES, "popularity", tmp_path
    )
    assert result.drift_share < 0.2 and not result.target_drifted


def test_reference_is_the_champions_training_data_else_the_latest_earlier_period() -> None:
    assert reference_periods([2010, 2011], [2010, 2011, 2012, 2013], 2013) == [2010, 2011]
    # Before the first champion: the latest curated period before this one (a rerun ignores later ones).
    assert reference_periods(None, [2010, 2011, 2012, 2013], 2012) == [2011]
    assert reference_periods(None, [2010], 2010) == []


# -- the drift sample ---------------------------------------------------------------------------------
def test_a_frame_within_the_sample_size_is_compared_whole() -> None:
    frame = make_tracks(2010, n=500)
    assert sample_rows(frame, 500, "track_id") is frame
    # The default sample never bites on the seed data: ~2,000 rows a year, 7 warm-up years pooled.
    assert DriftPolicy().report_rows >= 7 * 2_000


def test_the_sample_is_uniform_sized_and_follows_the_rows_not_their_order() -> None:
    frame = make_tracks(2010, n=3000)
    sample = sample_rows(frame, 1000, "track_id")
    assert len(sample) == 1000 and sample["track_id"].is_unique
    shuffled = sample_rows(frame.sample(frac=1.0, random_state=3), 1000, "track_id")
    assert set(shuffled["track_id"]) == set(sample["track_id"])  # the same rows, whatever their order
    # Uniform: the sample keeps the period's distribution (means within a few standard errors).
    for column in ("danceability", "tempo", "popularity"):
        assert abs(sample[column].mean() - frame[column].mean()) < 4 * frame[column].std() / np.sqrt(1000)
    # Independent of the holdout split, which hashes the same ids: about a fifth of the sample is held out.
    held_out = holdout_mask(sample["track_id"], 0.2).mean()
    assert 0.15 < held_out < 0.25


def test_a_sampled_report_flags_the_same_shift_as_the_whole_period(tmp_path: Path) -> None:
    reference = make_tracks(2010, n=6000)
    current = make_tracks(2011, n=6000, level=58, shift=0.25)
    whole = drift_report(current, reference, SPOTIFY_AUDIO_FEATURES, "popularity", tmp_path / "whole")
    sampled = drift_report(
        sample_rows(current, 2000, "track_id"),
        sample_rows(reference, 2000, "track_id"),
        SPOTIFY_AUDIO_FEATURES,
        "popularity",
        tmp_path / "sampled",
    )
    assert sampled.column_drifted == whole.column_drifted and sampled.target_drifted == whole.target_drifted
