"""Where a period's tracks come from.

Every source ends in the landing folder: the synthetic source writes one deterministic CSV per
period there (only if it is not there yet, so landing files are never rewritten); the file source
reads the folder the user points it at. Validation always reads through :func:`file.read_period`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from driftwheel.config import Settings
from driftwheel.sources import file as file_source
from driftwheel.sources.file import Batch, LandingError

logger = logging.getLogger(__name__)

__all__ = ["Batch", "LandingError", "Landed", "land_period", "read_period"]


@dataclass(frozen=True)
class Landed:
    period: int
    landing_dir: Path
    files: tuple[Path, ...]


def land_period(settings: Settings, period: int) -> Landed:
    """Make sure the landing folder holds ``period``'s raw data; return the files that do."""
    if settings.source == "synthetic":
        from driftwheel.sources.synthetic import generate_year

        path = settings.landing_dir / f"tracks_{period}.csv"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            generate_year(period, settings.synthetic).to_csv(tmp, index=False)
            tmp.replace(path)
            logger.info("generated synthetic landing file %s", path)
        return Landed(period, settings.landing_dir, (path,))
    if settings.source == "file":
        batch = read_period(settings, period)
        return Landed(period, settings.landing_dir, batch.files)
    raise ValueError(f"unknown source {settings.source!r}: expected 'synthetic' or 'file'")


def read_period(settings: Settings, period: int) -> Batch:
    """The period's raw rows from the landing folder, renamed to the dataset spec's columns."""
    source = settings.file_source
    if settings.source == "synthetic":
        source = type(source)(pattern=f"tracks_{period}.csv")
    return file_source.read_period(source, settings.dataset, settings.landing_dir, period)
