from pathlib import Path

from tracks import make_tracks
from driftwheel.config import SPOTIFY_AUDIO_FEATURES
from driftwheel.drift import drift_report, reference_periods


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
