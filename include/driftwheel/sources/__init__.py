"""Where a period's tracks come from.

Every source ends in the landing folder: the synthetic source writes one deterministic CSV per
period there (only if it is not there yet, so landing files are never rewritten); the Spotify
source fetches the year from the Web API into it, raw responses first (also only once); the file
source reads the folder the user points it at. Every source is then read through the landing
index of :mod:`driftwheel.sources.file` (kept under ``<state>/landing_index``): each landing file
is parsed once, whatever the number of periods it holds or of tasks that need them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from driftwheel import store
from driftwheel.config import DataError, Settings
from driftwheel.sources import file as file_source
from driftwheel.sources.file import Batch, LandingError

if TYPE_CHECKING:
    from driftwheel.sources.spotify import SpotifyCredentials

logger = logging.getLogger(__name__)

__all__ = ["Batch", "LandingError", "Landed", "index_dir", "land_period", "read_period"]


@dataclass(frozen=True)
class Landed:
    period: int
    landing_dir: Path
    files: tuple[Path, ...]


def land_period(settings: Settings, period: int, credentials: SpotifyCredentials | None = None) -> Landed:
    """Make sure the landing folder holds ``period``'s raw data; return the files that do.

    ``credentials`` are used by the Spotify source only (default: from the environment, see
    :meth:`SpotifyCredentials.from_env`); they are never logged nor written. The file source
    indexes the landing files (parsing only those it has not seen) and raises
    :class:`~driftwheel.sources.file.UnreadableFile` if any cannot be read, whatever the period (a
    file's years are only known once it is read), and :class:`LandingError` if none holds the period.
    """
    if settings.source == "synthetic":
        from driftwheel.sources.synthetic import generate_year

        _check_generator(settings)
        path = settings.landing_dir / f"tracks_{period}.csv"
        if not path.exists():
            store.write_frame(generate_year(period, settings.synthetic), path)
            logger.info("generated synthetic landing file %s", path)
        return Landed(period, settings.landing_dir, (path,))
    if settings.source == "spotify":
        from driftwheel.sources import spotify

        path = settings.landing_dir / f"tracks_{period}.csv"
        if path.exists():
            logger.info("spotify tracks of %d already landed in %s: not fetched again", period, path)
        else:
            spotify.fetch_year(
                period,
                settings.landing_dir,
                credentials or spotify.SpotifyCredentials.from_env(),
                api_base=settings.spotify.api_base,
                auth_url=settings.spotify.auth_url,
                max_tracks=settings.spotify.max_tracks,
            )
        return Landed(period, settings.landing_dir, (path,))
    if settings.source == "file":
        return Landed(period, settings.landing_dir, _index(settings, period).files_with(period))
    raise ValueError(f"unknown source {settings.source!r}: expected 'synthetic', 'spotify' or 'file'")


GENERATOR_FILE = "_generator.json"


class GeneratorMismatch(DataError):
    """The synthetic landing folder was generated with other settings than the current ones."""


def _check_generator(settings: Settings) -> None:
    """Refuse to mix two generators in one landing folder: its files are generated once and reused.

    The first synthetic period records the generator's settings next to the files; a later run
    with another scenario, seed or size would silently reuse the old files, so it is refused.
    """
    wanted = dataclasses.asdict(settings.synthetic)
    record = settings.landing_dir / GENERATOR_FILE
    if not record.exists():
        store.write_text(record, json.dumps(wanted, sort_keys=True))
        return
    recorded = json.loads(record.read_text())
    changed = {k: (recorded.get(k), v) for k, v in wanted.items() if recorded.get(k) != v}
    if changed:
        variables = {"scenario": "FLYWHEEL_SCENARIO", "rows_per_year": "FLYWHEEL_ROWS_PER_YEAR"}
        details = ", ".join(f"{variables.get(k, k)}: {old!r} there, {new!r} now" for k, (old, new) in changed.items())
        raise GeneratorMismatch(
            f"{settings.landing_dir} holds synthetic data generated with other settings ({details}); "
            "its files would be reused as they are: use another FLYWHEEL_STATE_DIR for these settings"
        )


def index_dir(settings: Settings) -> Path:
    """Where the landing indexes of ``settings``' state are kept (one per landing folder and column map)."""
    return settings.state_dir / "landing_index"


def _index(settings: Settings, period: int) -> file_source.LandingIndex:
    source = settings.file_source
    if settings.source in ("synthetic", "spotify"):
        # One file per period, in the canonical columns: the user's column map is not theirs.
        source = type(source)(pattern=f"tracks_{period}.csv")
    return file_source.index_landing(source, settings.dataset, settings.landing_dir, index_dir(settings))


def read_period(settings: Settings, period: int) -> Batch:
    """The period's raw rows from the landing folder, renamed to the dataset spec's columns.

    Reads the period's rows once: from the landing files this call indexes, else from the index.
    """
    return _index(settings, period).read_period(period)
