"""The synthetic source: deterministic, Spotify-shaped, and drifting on the documented schedule."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from driftwheel.config import SPOTIFY_AUDIO_FEATURES, SyntheticConfig
from driftwheel.sources.synthetic import COLUMNS, generate_year

UNIT_FEATURES = ("danceability", "energy", "speechiness", "acousticness", "instrumentalness", "liveness", "valence")
INT_COLUMNS = {"year", "key", "mode", "duration_ms", "time_signature", "popularity"}
STR_COLUMNS = {"track_id", "artist_name", "song_name", "album_name"}
BASE62 = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


@pytest.fixture(scope="module")
def years() -> dict[int, pd.DataFrame]:
    """Every year of the schedule at the default size and seed, generated once for the module."""
    return {year: generate_year(year) for year in range(2008, 2021)}


def test_same_seed_and_year_give_the_same_frame_whatever_was_generated_before() -> None:
    first = generate_year(2016)
    for other in (2020, 2009, 1999):
        generate_year(other)
    pd.testing.assert_frame_equal(generate_year(2016), first)


def test_seed_and_year_change_the_frame() -> None:
    base = generate_year(2012, SyntheticConfig(rows_per_year=300, seed=1))
    other_seed = generate_year(2012, SyntheticConfig(rows_per_year=300, seed=2))
    other_year = generate_year(2013, SyntheticConfig(rows_per_year=300, seed=1))
    assert not base["danceability"].equals(other_seed["danceability"])
    assert not base["danceability"].equals(other_year["danceability"])
    assert set(base["track_id"]).isdisjoint(other_seed["track_id"])


def test_columns_dtypes_and_size(years: dict[int, pd.DataFrame]) -> None:
    frame = years[2010]
    assert tuple(frame.columns) == COLUMNS
    assert set(SPOTIFY_AUDIO_FEATURES) <= set(frame.columns)
    assert len(frame) == SyntheticConfig().rows_per_year
    for column in frame.columns:
        expected = "int64" if column in INT_COLUMNS else "object" if column in STR_COLUMNS else "float64"
        assert str(frame[column].dtype) == expected, column
    assert (frame["year"] == 2010).all()
    assert len(generate_year(2010, SyntheticConfig(rows_per_year=37))) == 37


def test_values_lie_in_valid_ranges(years: dict[int, pd.DataFrame]) -> None:
    frame = pd.concat(years.values(), ignore_index=True)
    assert frame.notna().all().all()
    for column in UNIT_FEATURES:
        assert frame[column].between(0.0, 1.0).all(), column
    assert (frame["tempo"] > 0).all()
    assert frame["loudness"].between(-60.0, 0.0).all()
    assert frame["key"].between(0, 11).all()
    assert set(frame["mode"]) == {0, 1}
    assert set(frame["time_signature"]) <= {1, 3, 4, 5}
    assert (frame["duration_ms"] > 0).all()
    assert frame["popularity"].between(0, 100).all()


def test_marginals_look_like_spotify(years: dict[int, pd.DataFrame]) -> None:
    frame = years[2012]
    assert 0.5 < frame["danceability"].mean() < 0.7
    assert -9.0 < frame["loudness"].median() < -5.0
    assert frame["speechiness"].median() < 0.1 < frame["speechiness"].quantile(0.95)
    assert 0.3 < (frame["instrumentalness"] == 0).mean() < 0.6
    assert 0.15 < frame["liveness"].mean() < 0.25
    assert 110 < frame["tempo"].median() < 130
    assert 150_000 < frame["duration_ms"].median() < 300_000
    assert 0.55 < frame["mode"].mean() < 0.75
    assert (frame["time_signature"] == 4).mean() > 0.8
    # Energy and loudness move together, acousticness against both, as in the real data.
    assert frame["energy"].corr(frame["loudness"], method="spearman") > 0.5
    assert frame["energy"].corr(frame["acousticness"], method="spearman") < -0.4
    assert 5.5 < frame["popularity"].std() < 8.5


def test_track_ids_are_unique_within_and_across_years(years: dict[int, pd.DataFrame]) -> None:
    ids = pd.concat([years[2015]["track_id"], years[2016]["track_id"]])
    assert ids.is_unique
    assert (ids.str.len() == 22).all()
    assert set("".join(ids)) <= BASE62


def test_rows_are_shuffled(years: dict[int, pd.DataFrame]) -> None:
    frame = years[2014]
    position = pd.Series(np.arange(len(frame)))
    assert abs(position.corr(frame["popularity"], method="spearman")) < 0.1
    # Tracks of one artist are generated together; shuffled, they are not contiguous.
    assert (frame["artist_name"] == frame["artist_name"].shift()).mean() < 0.05


def test_artists_recur_across_years(years: dict[int, pd.DataFrame]) -> None:
    earlier = set(pd.concat([years[y]["artist_name"] for y in range(2008, 2016)]))
    share = years[2016]["artist_name"].isin(earlier).mean()
    assert 0.5 <= share <= 0.85
    counts = years[2016]["artist_name"].value_counts()
    assert counts.max() > 3  # some artists place several tracks in a year ...
    assert 300 < len(counts) < 1500  # ... but a year is not a handful of artists


def test_artists_carry_popularity_across_years(years: dict[int, pd.DataFrame]) -> None:
    # Star power is lasting: an artist's mean (relative to the year) in 2016 predicts 2017.
    def relative(frame: pd.DataFrame) -> pd.Series:
        return (frame["popularity"] - frame["popularity"].mean()).groupby(frame["artist_name"]).mean()

    both = pd.concat([relative(years[2016]), relative(years[2017])], axis=1, join="inner")
    assert len(both) > 100
    assert both.corr().iloc[0, 1] > 0.3


def test_popularity_rises_from_2008_to_2019(years: dict[int, pd.DataFrame]) -> None:
    means = {year: frame["popularity"].mean() for year, frame in years.items()}
    assert means[2019] - means[2008] > 10
    assert abs(means[2015] - 60.2) < 1.0
    assert means[2018] - means[2017] > 2.5


def test_plateau_years_have_no_label_drift(years: dict[int, pd.DataFrame]) -> None:
    mean = {year: frame["popularity"].mean() for year, frame in years.items()}
    assert abs(mean[2017] - mean[2016]) < 1.0
    assert abs(mean[2016] - mean[2015]) < 1.0
    assert abs(mean[2020] - mean[2019]) < 1.0


def test_covariates_drift_in_step_years_only(years: dict[int, pd.DataFrame]) -> None:
    def change(column: str, before: int, after: int) -> float:
        return years[after][column].mean() - years[before][column].mean()

    assert change("danceability", 2014, 2015) > 0.025
    assert change("danceability", 2017, 2018) > 0.025
    assert abs(change("danceability", 2016, 2017)) < 0.015
    assert abs(change("danceability", 2019, 2020)) < 0.015
    assert change("duration_ms", 2014, 2015) < -5_000
    assert abs(change("duration_ms", 2016, 2017)) < 3_000
    # Key, mode and time signature never drift.
    assert abs(change("mode", 2014, 2015)) < 0.05


def test_years_outside_the_schedule_work() -> None:
    config = SyntheticConfig(rows_per_year=400)
    early, late, far = generate_year(1990, config), generate_year(2030, config), generate_year(2150, config)
    for frame in (early, late, far):
        assert frame["popularity"].between(0, 100).all()
        assert frame["danceability"].between(0.0, 1.0).all()
    assert early["popularity"].mean() < 50 < late["popularity"].mean()
    assert far["popularity"].mean() < 85  # the level is capped, not extrapolated past 100


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        generate_year(-1)
    with pytest.raises(ValueError, match="rows_per_year"):
        generate_year(2010, SyntheticConfig(rows_per_year=-5))


def test_a_year_is_fast() -> None:
    generate_year(2011)  # the seed's artist pool is built once and cached
    start = time.perf_counter()
    generate_year(2012)
    assert time.perf_counter() - start < 0.2
