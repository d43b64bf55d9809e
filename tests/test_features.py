import numpy as np
import pandas as pd
import pytest

from tracks import make_tracks
from driftwheel.config import SPOTIFY_AUDIO_FEATURES
from driftwheel.features import (
    FeatureColumns,
    FeatureConfig,
    LabelHistory,
    base_title,
    build_features,
    feature_names,
    guest_artists,
    trend_level,
)

COLUMNS = FeatureColumns(
    numeric=SPOTIFY_AUDIO_FEATURES,
    period="year",
    target="popularity",
    artist="artist_name",
    title="song_name",
    album="album_name",
)
CONFIG = FeatureConfig()


def _years(*years: int) -> pd.DataFrame:
    return pd.concat([make_tracks(y, n=150, level=50 + y - 2010, seed=y) for y in years], ignore_index=True)


def test_a_period_reads_only_the_history_of_earlier_periods() -> None:
    full = LabelHistory.from_labelled(_years(2010, 2011, 2012), COLUMNS)
    only_2010 = LabelHistory.from_labelled(_years(2010), COLUMNS)
    batch = make_tracks(2011, n=150, seed=2011)
    # A history holding 2011 and 2012 gives 2011's rows exactly what 2010 alone gives them.
    pd.testing.assert_frame_equal(
        build_features(full, batch, COLUMNS, CONFIG), build_features(only_2010, batch, COLUMNS, CONFIG)
    )


def test_the_batch_labels_are_never_read() -> None:
    history = LabelHistory.from_labelled(_years(2010, 2011), COLUMNS)
    batch = make_tracks(2012, n=150, seed=2012)
    scrambled = batch.assign(popularity=np.random.default_rng(0).integers(0, 100, len(batch)))
    built = build_features(history, batch, COLUMNS, CONFIG)
    pd.testing.assert_frame_equal(built, build_features(history, scrambled, COLUMNS, CONFIG))
    pd.testing.assert_frame_equal(built, build_features(history, batch.drop(columns="popularity"), COLUMNS, CONFIG))


def test_row_order_and_index_are_not_features() -> None:
    history = LabelHistory.from_labelled(_years(2010, 2011), COLUMNS)
    batch = make_tracks(2012, n=150, seed=2012)
    shuffled = batch.sample(frac=1.0, random_state=3)
    shuffled.index = np.arange(len(shuffled))[::-1] * 7  # an index unrelated to anything
    built = build_features(history, batch, COLUMNS, CONFIG)
    rebuilt = build_features(history, shuffled, COLUMNS, CONFIG)
    assert rebuilt.index.equals(shuffled.index)
    by_track = rebuilt.set_axis(shuffled["track_id"].to_numpy()).loc[batch["track_id"].to_numpy()]
    np.testing.assert_array_equal(by_track.to_numpy(), built.to_numpy())


def test_history_features_describe_artists_seen_before() -> None:
    past = pd.DataFrame(
        {
            "year": 2010,
            "artist_name": ["Star", "Star", "Nobody"],
            "song_name": ["a", "b", "c"],
            "album_name": "x",
            "popularity": [80, 70, 30],
        }
    )
    batch = pd.DataFrame(
        {"year": 2011, "artist_name": ["Star", "Nobody", "New Face"], "song_name": ["d", "e", "f"], "album_name": "y"}
    )
    for name in SPOTIFY_AUDIO_FEATURES:
        past[name] = 1.0
        batch[name] = 1.0
    built = build_features(LabelHistory.from_labelled(past, COLUMNS), batch, COLUMNS, CONFIG)
    assert built["artist_seen"].tolist() == [1.0, 1.0, 0.0]
    # Residuals against 2010's mean (60): Star +15 on average over 2 tracks, shrunk by 3 pseudo-tracks.
    assert built["artist_shrunk_residual"].tolist() == pytest.approx([30 / 5, -30 / 4, 0.0])


def test_columns_are_optional() -> None:
    audio_only = FeatureColumns(numeric=("danceability", "energy"), period="year", target="popularity")
    frame = _years(2010).drop(columns=["artist_name", "song_name", "album_name"])
    built = build_features(LabelHistory.from_labelled(frame, audio_only), make_tracks(2011, n=20), audio_only, CONFIG)
    assert tuple(built.columns) == ("danceability", "energy") == feature_names(audio_only)
    assert audio_only.inputs() == ("year", "danceability", "energy")
    with_artist = feature_names(
        FeatureColumns(numeric=("energy",), period="year", target="popularity", artist="artist_name")
    )
    assert "artist_shrunk_residual" in with_artist and not any(n.startswith("title_") for n in with_artist)


def test_trend_level_extrapolates_the_last_means_before_the_period() -> None:
    means = pd.Series({2009: 10.0, 2010: 50.0, 2011: 52.0, 2012: 54.0, 2013: 56.0, 2014: 99.0})
    assert trend_level(means, 2014, window=4) == pytest.approx(58.0)  # 2014's own mean is not used
    assert trend_level(means, 2011, window=4) == pytest.approx(90.0)  # 10 -> 50 continues to 90
    assert trend_level(means, 2010, window=4) == 10.0  # one past period: its mean
    assert np.isnan(trend_level(means, 2009, window=4))


def test_a_step_in_the_level_restarts_the_trend_instead_of_becoming_a_slope() -> None:
    # Flat at 55, then one +8 step: a line through the window reads the step as a slope.
    means = pd.Series({2013: 55.0, 2014: 55.0, 2015: 55.0, 2016: 63.0, 2017: 63.0})
    assert trend_level(means, 2018, window=4) == pytest.approx(67.0)
    assert trend_level(means, 2018, window=4, step=5.0) == pytest.approx(63.0)  # the means since the step
    assert trend_level(means, 2017, window=4, step=5.0) == 63.0  # one mean since the step: that mean
    # A blip that reverts is two steps: the level follows the newest.
    blip = pd.Series({2013: 55.0, 2014: 55.0, 2015: 63.0, 2016: 55.0})
    assert trend_level(blip, 2017, window=4, step=5.0) == 55.0
    # Smaller moves are the trend: the same line as without the rule.
    rising = pd.Series({2011: 50.0, 2012: 52.0, 2013: 54.0, 2014: 57.0})
    assert trend_level(rising, 2015, window=4, step=5.0) == pytest.approx(trend_level(rising, 2015, window=4))


def test_update_grows_the_vocabulary_and_replaces_a_rerun_period() -> None:
    first = LabelHistory.from_labelled(_years(2010), COLUMNS)
    newcomer = make_tracks(2011, n=50, seed=5).assign(artist_name="Newcomer")
    grown = first.updated(LabelHistory.from_labelled(newcomer, COLUMNS))
    artists = set(grown.table.loc[grown.table["table"] == "artist", "key"])
    assert "Newcomer" in artists and set(first.table.loc[first.table["table"] == "artist", "key"]) < artists
    again = grown.updated(LabelHistory.from_labelled(newcomer, COLUMNS))
    pd.testing.assert_frame_equal(again.table.reset_index(drop=True), grown.table.reset_index(drop=True))
    assert again.periods == [2010, 2011]


def test_history_round_trips_through_parquet(tmp_path) -> None:
    history = LabelHistory.from_labelled(_years(2010, 2011), COLUMNS)
    history.save(tmp_path / "history.parquet")
    loaded = LabelHistory.load(tmp_path / "history.parquet")
    pd.testing.assert_series_equal(loaded.period_means, history.period_means, check_names=False)
    batch = make_tracks(2012, n=60)
    pd.testing.assert_frame_equal(
        build_features(loaded, batch, COLUMNS, CONFIG), build_features(history, batch, COLUMNS, CONFIG)
    )


def test_title_parsing() -> None:
    assert guest_artists("Hold Me (feat. Ana & Bo)") == ["Ana", "Bo"]
    assert guest_artists("Hold Me ft. Ana") == ["Ana"]
    assert guest_artists("Hold Me") == []
    assert base_title("Hold Me - Remastered 2011") == "hold me"
    assert base_title("Hold Me (Live)") == "hold me"


def test_features_of_some_rows_equal_those_rows_of_the_whole_batch() -> None:
    history = LabelHistory.from_labelled(_years(2010, 2011), COLUMNS)
    batch = pd.concat([make_tracks(2012, n=150, seed=2012), make_tracks(2013, n=120, seed=2013)])
    batch.index = np.arange(len(batch))[::-1] * 3  # an index unrelated to anything
    rows = np.random.default_rng(4).random(len(batch)) < 0.3
    whole = build_features(history, batch, COLUMNS, CONFIG)
    # Batch statistics (tracks per artist in the batch) still count every row of the period.
    pd.testing.assert_frame_equal(build_features(history, batch, COLUMNS, CONFIG, rows=rows), whole[rows])
    only_2013 = (batch["year"] == 2013).to_numpy()
    pd.testing.assert_frame_equal(build_features(history, batch, COLUMNS, CONFIG, rows=only_2013), whole[only_2013])
    none = build_features(history, batch, COLUMNS, CONFIG, rows=np.zeros(len(batch), dtype=bool))
    assert len(none) == 0 and list(none.columns) == list(whole.columns)
    with pytest.raises(ValueError, match="rows has 3 entries"):
        build_features(history, batch, COLUMNS, CONFIG, rows=np.ones(3, dtype=bool))
