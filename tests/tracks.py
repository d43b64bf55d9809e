"""Tiny, deterministic track tables for tests (Spotify-shaped, popularity driven by two features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from driftwheel.config import SPOTIFY_AUDIO_FEATURES, Settings


def make_tracks(year: int, n: int = 200, level: float = 50.0, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    """A small Spotify-shaped table whose popularity depends on two features and ``level``."""
    rng = np.random.default_rng([seed, year])
    frame = pd.DataFrame(
        {
            "year": year,
            "track_id": [f"t{year}_{seed}_{i:05d}" for i in range(n)],
            "artist_name": rng.choice([f"artist {i}" for i in range(40)], n),
            "song_name": [f"song {i}" for i in range(n)],
            "album_name": "album",
            "danceability": np.clip(rng.beta(5, 3, n) + shift, 0, 1),
            "energy": np.clip(rng.beta(5, 3, n), 0, 1),
            "key": rng.integers(0, 12, n),
            "loudness": rng.normal(-7, 2, n).clip(-30, 0),
            "mode": rng.integers(0, 2, n),
            "speechiness": rng.beta(1, 12, n),
            "acousticness": rng.beta(1, 5, n),
            "instrumentalness": rng.beta(0.3, 8, n),
            "liveness": rng.beta(2, 9, n),
            "valence": rng.beta(3, 3, n),
            "tempo": rng.normal(120, 25, n).clip(60, 210),
            "duration_ms": rng.normal(220_000, 30_000, n).astype(int),
            "time_signature": rng.choice([3, 4, 4, 4, 5], n),
        }
    )
    signal = 12 * (frame["danceability"] - 0.6) + 10 * (frame["energy"] - 0.6)
    frame["popularity"] = np.clip(np.round(level + signal + rng.normal(0, 2, n)), 0, 100).astype(int)
    assert list(frame.columns[:5]) == ["year", "track_id", "artist_name", "song_name", "album_name"]
    assert set(SPOTIFY_AUDIO_FEATURES) <= set(frame.columns)
    return frame


def land(settings: Settings, year: int, frame: pd.DataFrame) -> Path:
    path = settings.landing_dir / f"tracks_{year}.csv"
    frame.to_csv(path, index=False)
    return path
