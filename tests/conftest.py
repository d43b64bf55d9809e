"""Shared fixtures: tiny, deterministic track tables and settings rooted in a temporary state dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftwheel.config import Settings, StudyNetConfig, TrainingConfig, TrendResidualConfig

SEED_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "spotify_seed" / "tracks_2008_2019.csv"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """File-source settings on a temporary state dir, with short training for speed."""
    landing = tmp_path / "landing"
    landing.mkdir()
    base = Settings(
        state_dir=tmp_path / "state",
        source="file",
        training=TrainingConfig(
            study_net=StudyNetConfig(epochs=15, fine_tune_epochs=15),
            warmup_start=2010,
            warmup_end=2011,
            trend_residual=TrendResidualConfig(ensemble_size=2, epochs=8),
        ),
    )
    return base.with_file_source(landing_dir=landing)
