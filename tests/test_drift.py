from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tracks import make_tracks

from driftwheel.config import SPOTIFY_AUDIO_FEATURES, DriftPolicy
from driftwheel.drift import drift_report, reference_periods, sample_pooled, sample_rows
from driftwheel.evaluate import holdout_mask


def _report(current, reference, out: Path, features=SPOTIFY_AUDIO_FEATURES):  # type: ignore[no-untyped-def]
    return drift_report(
        current, reference, features, "popularity", out, DriftPolicy(), period=2011, reference_periods=[2009, 2010]
    )


def test_shifted_feature_and_label_are_flagged(tmp_path: Path) -> None:
    reference = make_tracks(2010, n=1500)
    current = make_tracks(2011, n=1500, level=58, shift=0.25)
    result = _report(current, reference, tmp_path)
    assert result.column_drifted["danceability"]
    assert not result.column_drifted["tempo"]
    assert result.target_drifted
    assert result.drifted_columns == sum(result.column_drifted.values())
    assert result.html_path.stat().st_size > 10_000 and result.json_path.exists()


def test_same_distribution_is_stable(tmp_path: Path) -> None:
    result = _report(make_tracks(2011, n=1500, seed=1), make_tracks(2010, n=1500), tmp_path)
    assert result.drift_share < 0.2 and not result.target_drifted


def test_the_report_names_the_period_the_reference_and_the_tests(tmp_path: Path) -> None:
    result = _report(make_tracks(2011, n=300, seed=1), make_tracks(2010, n=300), tmp_path)
    assert result.html_path.name == "drift_2011_vs_2009-2010.html"
    assert result.json_path.name == "drift_2011_vs_2009-2010.json"
    html = result.html_path.read_text()
    assert "<title>Drift of 2011 (300 rows) against 2009-2010 (300 rows): wasserstein" in html
    # The target is shown by its distribution (rows in label order), never against row order.
    assert "Index binned" not in html and "rows in popularity order (binned)" in html


@pytest.mark.parametrize("rows", [50, 100_000])
def test_the_drift_score_keeps_its_test_and_direction_at_every_size(tmp_path: Path, rows: int) -> None:
    # Evidently's default switches from a K-S p-value (small = drift) below 1,000 rows to a
    # Wasserstein distance (large = drift) above: the same column meant opposite things.
    features = ("danceability", "mode")
    reference = make_tracks(2010, n=rows)
    same = _report(make_tracks(2011, n=rows, seed=1), reference, tmp_path / "same", features)
    shifted = _report(make_tracks(2011, n=rows, seed=1, level=62), reference, tmp_path / "shifted", features)
    assert same.methods == shifted.methods == {"danceability": "wasserstein", "mode": "jensenshannon",
                                               "popularity": "wasserstein"}  # fmt: skip
    # A distance: larger = more drift, whatever the size.
    assert shifted.target_drift_score > same.target_drift_score and shifted.target_drifted


def test_reference_is_a_fixed_window_of_the_last_labelled_periods() -> None:
    available = [2008, 2009, 2010, 2011, 2012, 2013]
    assert reference_periods(available, 2013, 3) == [2010, 2011, 2012]
    # A rerun of an earlier period ignores later ones; the start of the data has fewer.
    assert reference_periods(available, 2010, 3) == [2008, 2009]
    assert reference_periods(available, 2008, 3) == []


# -- the drift sample ---------------------------------------------------------------------------------
def test_a_frame_within_the_sample_size_is_compared_whole() -> None:
    frame = make_tracks(2010, n=500)
    assert sample_rows(frame, 500, "track_id") is frame
    # The default sample never bites on the seed data: ~2,000 rows a year, 7 warm-up years pooled.
    assert DriftPolicy().report_rows >= 7 * 2_000


def test_sampling_periods_one_at_a_time_gives_the_pooled_sample() -> None:
    # The drift step reads a million-row reference window one period at a time.
    periods = [make_tracks(year, n=n) for year, n in ((2010, 1500), (2011, 400), (2012, 2500))]
    pooled = pd.concat(periods, ignore_index=True)
    for size in (300, 1000, 2000, 5000):
        pd.testing.assert_frame_equal(
            sample_pooled(iter(periods), size, "track_id"), sample_rows(pooled, size, "track_id")
        )


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
    whole = _report(current, reference, tmp_path / "whole")
    sampled = _report(
        sample_rows(current, 2000, "track_id"), sample_rows(reference, 2000, "track_id"), tmp_path / "sampled"
    )
    assert sampled.column_drifted == whole.column_drifted and sampled.target_drifted == whole.target_drifted


def test_a_cached_report_is_reused_only_for_the_same_inputs(tmp_path: Path) -> None:
    # The drift lab shares a cache between the policies of a scenario (DriftPolicy.report_cache_dir).
    cache = tmp_path / "cache"
    policy = DriftPolicy(report_cache_dir=cache)
    reference = make_tracks(2010, n=300)
    current = make_tracks(2011, n=300, seed=1, level=62)

    def report(frame, out: Path, drift_policy: DriftPolicy = policy):  # type: ignore[no-untyped-def]
        return drift_report(
            frame, reference, SPOTIFY_AUDIO_FEATURES, "popularity", out, drift_policy,
            period=2011, reference_periods=[2009, 2010],
        )  # fmt: skip

    uncached = report(current, tmp_path / "plain", DriftPolicy())
    first = report(current, tmp_path / "a")
    assert len(list(cache.glob("*.json"))) == 1 and len(list(cache.glob("*.html"))) == 1
    assert first.json_path.read_bytes() == next(cache.glob("*.json")).read_bytes()
    assert (first.column_scores, first.target_drift_score) == (uncached.column_scores, uncached.target_drift_score)

    # Reused, not recomputed: an edit of the stored report shows in the next result.
    stored = next(cache.glob("*.json"))
    stored.write_text(stored.read_text().replace(repr(first.target_drift_score), "0.0", 1))
    assert report(current, tmp_path / "b").target_drift_score == 0.0

    # Other rows, or another test threshold, are another report.
    other = report(make_tracks(2011, n=300, seed=2, level=62), tmp_path / "c")
    assert other.target_drift_score > 0.0 and other.column_scores != first.column_scores
    stricter = report(current, tmp_path / "d", DriftPolicy(report_cache_dir=cache, drift_threshold=0.2))
    assert stricter.target_drift_score == pytest.approx(uncached.target_drift_score)
    assert len(list(cache.glob("*.json"))) == 3
