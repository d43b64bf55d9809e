"""Synthetic Spotify-like tracks, one year at a time, for running the flywheel without real data.

:func:`generate_year` imitates the public Spotify sample the flywheel was designed on (tracks
released 2008-2019, 13 audio features, a popularity snapshot taken in 2020): the per-column
marginals and the main correlations of the audio features, artists who recur across years with a
lasting "star power", and a popularity label that drifts upward year after year.

The drift follows a fixed schedule (:data:`POPULARITY_LEVEL` and :data:`COVARIATE_SHIFT`) so that
a flywheel run has something to decide in every year: label and feature drift in 2015 and 2018,
and stretches with no drift at all (2016-2017, 2020) in which the right decision is to skip.

That schedule is the ``spotify_like`` scenario, the default. ``config.scenario`` can name another
(:mod:`driftwheel.scenarios`): a ``stable`` baseline with covariate, label, concept or new-artist
shifts of a given shape and severity. Shifts draw from random streams of their own, never from
the baseline's, so the default's frames are the same bytes as before scenarios existed.

Everything is a pure function of ``(config.seed, year, scenario)``: the artist pool derives from
the seed alone, a year's rows from ``numpy.random.default_rng([seed, year])`` (a shift's from
``[seed, year, stream]``), so a year's frame is the same whichever other years were generated before it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import string
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from driftwheel.config import SEED_COLUMNS, SEED_INT_COLUMNS, SEED_TEXT_COLUMNS, SyntheticConfig
from driftwheel.scenarios import Scenario, Shift, load_scenario

logger = logging.getLogger(__name__)

__all__ = [
    "COLUMNS",
    "COVARIATE_SHIFT",
    "POPULARITY_LEVEL",
    "covariate_shift",
    "generate_year",
    "popularity_level",
]

COLUMNS = SEED_COLUMNS

# -- the drift schedule ------------------------------------------------------------------------
# Mean popularity of each year's tracks. 2008-2015 follow the real data's yearly means (a 2020
# snapshot favours recent releases). After that the real data keeps rising every year; here it
# plateaus in 2016-2017 and 2020 instead, because a flywheel is only worth testing if some years
# call for a retrain and others do not: plateau years are the ones where "skip" is right.
POPULARITY_LEVEL: dict[int, float] = {
    2008: 51.0,
    2009: 52.0,
    2010: 53.4,
    2011: 53.4,
    2012: 54.8,
    2013: 56.2,
    2014: 57.4,
    2015: 60.2,
    2016: 60.3,  # plateau: no label drift ...
    2017: 60.4,  # ... and no covariate drift below
    2018: 64.4,  # jump, with covariate drift
    2019: 66.4,
    2020: 66.5,  # plateau again
}

# How far the feature distributions have moved since 2008: each drifting feature's latent normal
# is shifted by this index times its loading in _DRIFT_LOADINGS, in standard deviations. The
# warm-up years (pooled to train the first model) drift slowly; 2015 and 2018 take steps large
# enough for a drift report to flag most features; the plateau years repeat the previous value
# exactly, so their features come from the very same distribution.
COVARIATE_SHIFT: dict[int, float] = {
    2008: 0.00,
    2009: 0.05,
    2010: 0.10,
    2011: 0.15,
    2012: 0.20,
    2013: 0.25,
    2014: 0.30,
    2015: 1.00,  # step
    2016: 1.00,
    2017: 1.00,
    2018: 1.80,  # step
    2019: 2.00,
    2020: 2.00,
}

# Outside the table the level follows the table's overall trend, kept well inside 0..100 so a
# year's spread is not piled up against a bound; the covariate shift stays at its end value.
_LEVEL_BOUNDS = (20.0, 80.0)

# The direction of covariate drift, as in the real 2008-2019 data: more danceable, speechier,
# shorter, more acoustic tracks with less energy, lower valence and less live sound, a bit quieter.
# Eight of the 13 features move, so a step drifts more than half of the columns.
_DRIFT_LOADINGS: dict[str, float] = {
    "danceability": 0.35,
    "speechiness": 0.35,
    "duration_ms": -0.35,
    "energy": -0.35,
    "valence": -0.35,
    "acousticness": 0.30,
    "loudness": -0.35,
    "liveness": -0.35,
}


def popularity_level(year: int) -> float:
    """The mean popularity of ``year``'s tracks: the table, or its linear trend outside it (clamped)."""
    if year in POPULARITY_LEVEL:
        return POPULARITY_LEVEL[year]
    first, last = min(POPULARITY_LEVEL), max(POPULARITY_LEVEL)
    slope = (POPULARITY_LEVEL[last] - POPULARITY_LEVEL[first]) / (last - first)
    anchor = first if year < first else last
    level = POPULARITY_LEVEL[anchor] + slope * (year - anchor)
    return float(np.clip(level, *_LEVEL_BOUNDS))


def covariate_shift(year: int) -> float:
    """The covariate shift index of ``year``: the table, or its nearest end outside it."""
    first, last = min(COVARIATE_SHIFT), max(COVARIATE_SHIFT)
    return COVARIATE_SHIFT[min(max(year, first), last)]


# -- audio features ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Margin:
    """Maps a standard-normal latent ``z`` onto one feature's real-looking marginal distribution.

    ``unit``: ``lo + (hi - lo) * expit(centre + scale * z)``, a bounded, beta-like shape;
    ``log``: ``exp(centre + scale * z)``; ``neglog``: ``-exp(centre - scale * z)`` (loudness in dB).
    The scale differs below and above the median (``scale_lo``/``scale_hi``) to give the skew of
    the real columns. The parameters were fitted to the quantiles of the real 2008-2019 sample.
    Values are rounded like the Spotify API's and kept within ``bounds``.
    """

    kind: Literal["unit", "log", "neglog"]
    centre: float
    scale_lo: float
    scale_hi: float
    lo: float = 0.0
    hi: float = 1.0
    decimals: int = 3
    significant: bool = False  # round to `decimals` significant digits (tiny values stay non-zero)
    bounds: tuple[float, float] = (0.0, 1.0)

    def apply(self, z: np.ndarray) -> np.ndarray:
        spread = z * np.where(z < 0, self.scale_lo, self.scale_hi)
        if self.kind == "unit":
            x = self.lo + (self.hi - self.lo) / (1.0 + np.exp(-(self.centre + spread)))
        elif self.kind == "log":
            x = np.exp(self.centre + spread)
        else:
            x = -np.exp(self.centre - spread)
        x = _round_significant(x, self.decimals) if self.significant else np.round(x, self.decimals)
        return np.clip(x, *self.bounds)


def _round_significant(x: np.ndarray, digits: int) -> np.ndarray:
    """``x`` rounded to ``digits`` significant digits; values below 1e-6 become 0.

    Like the Spotify API, which reports 8.5e-06 rather than 0.0 for an almost surely vocal track,
    but 0.0 for about half of all tracks' instrumentalness.
    """
    magnitude = np.floor(np.log10(np.maximum(np.abs(x), 1e-12)))
    factor = 10.0 ** (digits - 1 - magnitude)
    return np.where(x < 1e-6, 0.0, np.round(x * factor) / factor)


# The continuous features, in the row order of _LOADINGS.
_MARGINS: dict[str, _Margin] = {
    "danceability": _Margin("unit", 0.43, 0.74, 0.77),
    "energy": _Margin("unit", 0.71, 1.10, 1.20),
    "loudness": _Margin("neglog", 1.83, 0.49, 0.42, bounds=(-60.0, 0.0)),
    "speechiness": _Margin("unit", -3.42, 1.05, 1.70, lo=0.022, hi=0.97, decimals=4),
    "acousticness": _Margin("unit", -1.93, 3.20, 2.40, decimals=3, significant=True),
    "instrumentalness": _Margin("unit", -13.1, 8.6, 8.6, hi=0.97, decimals=3, significant=True),
    "liveness": _Margin("unit", -2.12, 0.55, 1.30, lo=0.02, decimals=4),
    "valence": _Margin("unit", -0.15, 1.22, 1.30),
    "tempo": _Margin("log", 4.79, 0.29, 0.21, bounds=(40.0, 230.0)),
    "duration_ms": _Margin("log", 12.295, 0.24, 0.23, decimals=0, bounds=(30_000.0, 1.2e6)),
}

# A three-factor model of the features' latents ("intensity", "groove", "vocals"): it reproduces
# the real data's main rank correlations (energy~loudness +0.75, energy~acousticness -0.6,
# danceability~valence +0.4, vocals against instrumentalness) and is positive definite by
# construction, which a hand-written correlation matrix need not be.
_LOADINGS: dict[str, tuple[float, float, float]] = {
    "danceability": (-0.05, 0.65, 0.25),
    "energy": (0.85, 0.15, 0.10),
    "loudness": (0.80, 0.15, 0.30),
    "speechiness": (0.15, 0.20, 0.35),
    "acousticness": (-0.72, 0.00, 0.00),
    "instrumentalness": (-0.10, -0.20, -0.55),
    "liveness": (0.20, 0.00, 0.00),
    "valence": (0.30, 0.60, 0.10),
    "tempo": (0.20, 0.00, 0.00),
    "duration_ms": (0.00, -0.25, 0.00),
}
# Share of the factors' variance that is the artist's style rather than the track's: an artist's
# tracks sound alike, so features carry a little information about who made them.
_ARTIST_STYLE_SHARE = 0.2

# Key, mode and time signature are independent of everything else, with the real shares.
_KEYS = np.arange(12)
_KEY_P = np.array([115, 116, 98, 32, 71, 83, 73, 104, 73, 89, 68, 78]) / 1000
_MAJOR_P = 0.66
_TIME_SIGNATURES = np.array([4, 3, 5, 1])
_TIME_SIGNATURE_P = np.array([909, 70, 14, 7]) / 1000

# -- popularity --------------------------------------------------------------------------------
_ARTIST_EFFECT_STD = 4.0
_NOISE_STD = 4.0
# Gamma shape of the artist effect and of the noise: the real label is right-skewed (a year's
# search results have a floor and a few hits), skewness about 0.8 within a year.
_SKEW_SHAPE = 2.0
# Scales the feature term of popularity to a standard deviation of about 3 points: within a year
# the audio features explain little, as in the real data.
_FEATURE_EFFECT_SCALE = 1.6


def _feature_effect(features: dict[str, np.ndarray], weights: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Popularity points from a smooth, mildly non-linear function of five audio features.

    This is the part of the label a model of the audio features can learn. Features are scaled
    with fixed constants (the real data's rough centres and spreads), never with the year's own
    statistics, so the function is the same in every year, unless ``weights`` (a concept shift)
    multiply a feature's term, per row.
    """
    dance = (features["danceability"] - 0.6) / 0.17
    energy = (features["energy"] - 0.64) / 0.22
    loud = np.tanh((features["loudness"] + 7.0) / 4.0)
    acoustic = (features["acousticness"] - 0.25) / 0.29
    speech = (np.sqrt(features["speechiness"]) - 0.28) / 0.13
    # Summed left to right, as 1.6*d - 0.4*d**2 - e + l - 0.6*a + 0.5*s: x + (-y) is x - y
    # exactly, so without weights the sum is the same floats as before scenarios existed.
    terms = {
        "danceability": 1.6 * dance - 0.4 * dance**2,
        "energy": -energy,
        "loudness": loud,
        "acousticness": -0.6 * acoustic,
        "speechiness": 0.5 * speech,
    }
    weights = weights or {}
    effect: np.ndarray | None = None
    for name, term in terms.items():
        if name in weights:
            term = term * weights[name]
        effect = term if effect is None else effect + term
    assert effect is not None
    return _FEATURE_EFFECT_SCALE * effect


# -- artists -----------------------------------------------------------------------------------
# Debuts start well before 2008 and end well after 2020, so every year of the schedule sees a
# steady mix of newcomers and veterans; a year outside the roster window uses the roster of the
# window's nearest end, so far-off years never run out of artists. Tuned so that, as in the real
# data, a year has ~800 artists with 1-25 tracks each, and 65-75% of a 2015+ year's tracks are
# by an artist seen in an earlier year (about a third in 2009, building up as history grows).
_POOL_SIZE = 9600
_DEBUT_YEARS = (1994, 2026)
_ROSTER_YEARS = (2002, 2026)
_MEAN_EXTRA_ACTIVE_YEARS = 10.0
_VISIBILITY_SIGMA = 0.5  # lognormal spread of how many tracks an artist places in a year ...
_HOT_YEAR_SIGMA = 1.7  # ... and its swing from year to year: active artists skip some years
_MAX_WEIGHT_RATIO = 100.0  # cap on a year's weight, relative to the median active artist


@dataclass(frozen=True)
class _ArtistPool:
    names: np.ndarray  # unique strings
    debut: np.ndarray  # first active year
    last: np.ndarray  # last active year
    visibility: np.ndarray  # relative chance of a track in an active year
    effect: np.ndarray  # star power: popularity points on every track (mean 0, std 4, skewed)
    style: np.ndarray  # (n, 3) the artist's sound, in the factors of _LOADINGS


# Names are built from syllables and small word lists rather than a fake-data library, so that
# they depend on nothing but the seed (a library upgrade must not rename every artist).
_ONSETS = ("b", "br", "d", "f", "g", "j", "k", "l", "m", "n", "p", "r", "s", "sh", "t", "tr", "v", "z")
_VOWELS = ("a", "a", "e", "e", "i", "o", "o", "u", "ay", "ee")
_CODAS = ("", "", "", "n", "n", "r", "l", "s", "x", "th", "nd", "k")
_ADJECTIVES = tuple(
    "Golden Broken Electric Silent Wild Lonely Neon Velvet Crazy Sweet Cold Burning Hollow "
    "Midnight Blue Black Little Lucky Restless Secret Summer Fading Higher Dirty Perfect".split()
)
_NOUNS = tuple(
    "Heart Night Fire Love Dream City River Road Rain Star Light Sky Ghost Ocean Shadow Summer "
    "Paradise Money Youth Angel Thunder Mirror Garden Highway Echo Crown Wolf Rose Diamond Storm "
    "Moon Body Kingdom Island Signal Motion Gravity Daylight Avenue Horizon".split()
)
_VERBS = tuple("Hold Run Dance Call Break Wait Fall Stay Burn Chase Drive Shine Breathe Go".split())
_OBJECTS = tuple("Me You Us Tonight Forever Away Home Again Alone".split())
_PREFIXES = ("Lil", "DJ", "Young", "MC", "Los", "Big")
# Most albums have a plain title.
_ALBUM_SUFFIXES = ("",) * 5 + (" (Deluxe Edition)", " (Remastered)", " - EP", " (Expanded Edition)")
_FEAT_SHARE = 0.07
_SINGLE_SHARE = 0.30
# Every onset-vowel pair, so that a word is a few tuple look-ups rather than string building.
_SYLLABLES = tuple(onset + vowel for onset in _ONSETS for vowel in _VOWELS)


def _words(rng: np.random.Generator, n: int, syllables: tuple[int, int]) -> list[str]:
    """``n`` capitalised made-up words of ``syllables`` (min, max) syllables, e.g. "Delvin"."""
    fewest, most = syllables
    counts = rng.integers(fewest, most + 1, size=n).tolist()
    parts = rng.integers(len(_SYLLABLES), size=(n, most)).tolist()
    codas = rng.integers(len(_CODAS), size=n).tolist()
    return [
        ("".join([_SYLLABLES[p] for p in part[:count]]) + _CODAS[coda]).capitalize()
        for count, part, coda in zip(counts, parts, codas, strict=True)
    ]


def _plural(noun: str) -> str:
    if noun.endswith("y"):
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")


def _artist_names(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` artist names, not necessarily unique: people, bands, stage names."""
    form = rng.random(n)
    first, last, single = _words(rng, n, (1, 2)), _words(rng, n, (2, 3)), _words(rng, n, (2, 3))
    adjective = rng.integers(len(_ADJECTIVES), size=n)
    noun = rng.integers(len(_NOUNS), size=n)
    prefix = rng.integers(len(_PREFIXES), size=n)
    names = []
    for i in range(n):
        if form[i] < 0.55:  # "Tavo Brenith"
            names.append(f"{first[i]} {last[i]}")
        elif form[i] < 0.65:  # "The Neon Cities"
            names.append(f"The {_ADJECTIVES[adjective[i]]} {_plural(_NOUNS[noun[i]])}")
        elif form[i] < 0.75:  # "Velvet Garden"
            names.append(f"{_ADJECTIVES[adjective[i]]} {_NOUNS[noun[i]]}")
        elif form[i] < 0.88:  # "Lil Zaro"
            names.append(f"{_PREFIXES[prefix[i]]} {first[i]}")
        else:  # "Shaylor"
            names.append(single[i])
    return names


def _titles(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` song or album titles such as "Golden Youth", "Hold Me", "Shadow of the River"."""
    form = rng.random(n)
    adjective = rng.integers(len(_ADJECTIVES), size=n)
    noun = rng.integers(len(_NOUNS), size=(n, 2))
    verb = rng.integers(len(_VERBS), size=n)
    obj = rng.integers(len(_OBJECTS), size=n)
    titles = []
    for i in range(n):
        if form[i] < 0.35:
            titles.append(f"{_ADJECTIVES[adjective[i]]} {_NOUNS[noun[i, 0]]}")
        elif form[i] < 0.6:
            titles.append(f"{_VERBS[verb[i]]} {_OBJECTS[obj[i]]}")
        elif form[i] < 0.85:
            titles.append(_NOUNS[noun[i, 0]])
        else:
            titles.append(f"{_NOUNS[noun[i, 0]]} of the {_NOUNS[noun[i, 1]]}")
    return titles


@functools.lru_cache(maxsize=8)
def _artist_pool(seed: int) -> _ArtistPool:
    """The seed's artists: names, active years, visibility, star power and style. Read-only arrays."""
    rng = np.random.default_rng(seed)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < _POOL_SIZE:
        for name in _artist_names(rng, _POOL_SIZE):
            # A repeated name would merge two artists' histories: keep the first.
            if name not in seen and len(names) < _POOL_SIZE:
                seen.add(name)
                names.append(name)
    debut = rng.integers(_DEBUT_YEARS[0], _DEBUT_YEARS[1] + 1, size=_POOL_SIZE)
    # Geometric careers: most artists last a few years, a few are active for decades.
    last = debut + rng.geometric(1.0 / (1.0 + _MEAN_EXTRA_ACTIVE_YEARS), size=_POOL_SIZE) - 1
    visibility = rng.lognormal(0.0, _VISIBILITY_SIGMA, size=_POOL_SIZE)
    star = rng.gamma(_SKEW_SHAPE, 1.0, size=_POOL_SIZE)
    effect = (star - _SKEW_SHAPE) / np.sqrt(_SKEW_SHAPE) * _ARTIST_EFFECT_STD
    style = rng.standard_normal((_POOL_SIZE, 3))
    pool = _ArtistPool(np.array(names, dtype=object), debut, last, visibility, effect, style)
    for array in (pool.names, pool.debut, pool.last, pool.visibility, pool.effect, pool.style):
        array.setflags(write=False)  # cached and shared between calls
    return pool


# -- ids ---------------------------------------------------------------------------------------
_BASE62 = np.frombuffer((string.digits + string.ascii_uppercase + string.ascii_lowercase).encode(), dtype=np.uint8)
_ID_LENGTH = 22


def _track_ids(seed: int, year: int, n: int) -> np.ndarray:
    """Spotify-like ids: 22 base62 characters spelling a 128-bit hash of (seed, year, row).

    Each 64-bit half gives 11 characters (62**11 > 2**64), so distinct hashes give distinct ids.
    """
    digests = b"".join(hashlib.blake2b(f"{seed}/{year}/{row}".encode(), digest_size=16).digest() for row in range(n))
    halves = np.frombuffer(digests, dtype=">u8").astype(np.uint64).reshape(n, 2)
    powers = np.uint64(62) ** np.arange(_ID_LENGTH // 2 - 1, -1, -1, dtype=np.uint64)
    digits = (halves[:, :, None] // powers) % np.uint64(62)  # (n, 2, 11), most significant first
    codes = np.ascontiguousarray(_BASE62[digits.reshape(n, _ID_LENGTH)])
    return codes.view(f"S{_ID_LENGTH}").ravel().astype(str).astype(object)


# -- the generator -----------------------------------------------------------------------------
def generate_year(
    year: int, config: SyntheticConfig = SyntheticConfig(), scenario: Scenario | None = None
) -> pd.DataFrame:
    """Generate ``config.rows_per_year`` Spotify-like tracks released in ``year``.

    Returns a frame with the columns of :data:`COLUMNS` in that order: ``year``, ``key``,
    ``mode``, ``duration_ms``, ``time_signature`` and ``popularity`` (0..100) as int64, the other
    features as float64 (unit-interval features in [0, 1], loudness in dB below 0, tempo above 0),
    ids and names as strings; ``track_id`` is unique across years. Rows are in random order.

    ``scenario`` (default: the one ``config.scenario`` names, see :mod:`driftwheel.scenarios`)
    says how the data drifts. The frame depends only on ``(config.seed, year, scenario)``. Any
    year >= 0 works: under the default ``spotify_like`` schedule, outside 2008-2020 the popularity
    level follows the trend of :data:`POPULARITY_LEVEL` (within 20..80) while the features keep the
    distribution of the nearest year in :data:`COVARIATE_SHIFT`.
    Raises ``ValueError`` for a negative year, seed or row count, and
    :class:`~driftwheel.scenarios.ScenarioError` for an unknown scenario.
    """
    if year < 0 or config.seed < 0:
        raise ValueError(f"year and seed must be non-negative, got year={year}, seed={config.seed}")
    if config.rows_per_year < 0:
        raise ValueError(f"rows_per_year must be non-negative, got {config.rows_per_year}")
    scenario = load_scenario(config.scenario) if scenario is None else scenario
    n = config.rows_per_year
    pool = _artist_pool(config.seed)
    rng = np.random.default_rng([config.seed, year])

    artists = _draw_artists(pool, year, n, rng)
    shifts = _row_shifts(scenario.shifts, config.seed, year, n)
    names, star, style = pool.names[artists], pool.effect[artists], pool.style[artists]
    if shifts.newcomer is not None and shifts.newcomer.any():
        artists, names, star, style = _with_newcomers(pool, config.seed, year, artists, shifts.newcomer)
    features = _draw_features(style, _baseline_shift(scenario, year), rng, shifts.latent)

    # Centred within the year, so that the year's mean is the schedule's level whichever artists
    # happened to release that year: the plateau years stay flat.
    signal = star + _feature_effect(features, shifts.weights)
    signal = signal - signal.mean() if n else signal
    noise = (rng.gamma(_SKEW_SHAPE, 1.0, size=n) - _SKEW_SHAPE) / np.sqrt(_SKEW_SHAPE) * _NOISE_STD
    level: float | np.ndarray = _baseline_level(scenario, year)
    if shifts.label is not None:
        level = level + shifts.label
    popularity = np.clip(np.round(level + signal + noise), 0, 100)

    songs = _song_names(pool, artists, rng)
    frame = pd.DataFrame(
        {
            "year": np.full(n, year),
            "track_id": _track_ids(config.seed, year, n),
            "artist_name": names,
            "song_name": songs,
            "album_name": _album_names(artists, songs, rng),
            **features,
            "key": rng.choice(_KEYS, size=n, p=_KEY_P),
            "mode": (rng.random(n) < _MAJOR_P).astype(np.int64),
            "time_signature": rng.choice(_TIME_SIGNATURES, size=n, p=_TIME_SIGNATURE_P),
            "popularity": popularity,
        }
    )
    frame = frame.iloc[rng.permutation(n)].reset_index(drop=True)[list(COLUMNS)]
    frame = frame.astype({c: "int64" for c in SEED_INT_COLUMNS} | {c: object for c in SEED_TEXT_COLUMNS})
    logger.debug(
        "generated %d synthetic tracks for %d (seed %d, scenario %s, baseline level %.1f)",
        n,
        year,
        config.seed,
        scenario.name,
        _baseline_level(scenario, year),
    )
    return frame


# -- scenarios ---------------------------------------------------------------------------------
# The stable baseline's label level: about the middle of the Spotify-like schedule.
_STABLE_LEVEL = 55.0
# Random streams of a year's scenario draws, apart from the baseline's [seed, year] (a stream
# number, never 0: SeedSequence pads entropy with zeros, so [seed, year, 0] could alias it).
_NEWCOMER_STREAM = 1000
_SHIFT_STREAM = 2000
# New artists place about as many tracks in their first year as a typical artist does in a year.
_NEWCOMER_TRACKS = 2.5


def _baseline_level(scenario: Scenario, year: int) -> float:
    return popularity_level(year) if scenario.baseline == "spotify_like" else _STABLE_LEVEL


def _baseline_shift(scenario: Scenario, year: int) -> np.ndarray:
    """Per continuous feature (in :data:`_LOADINGS` order), the baseline's latent shift in ``year``."""
    drift = np.array([_DRIFT_LOADINGS.get(name, 0.0) for name in _LOADINGS])
    return (covariate_shift(year) if scenario.baseline == "spotify_like" else 0.0) * drift


@dataclass(frozen=True)
class _RowShifts:
    """What a scenario's shifts do to each of a year's rows; None: nothing of that kind."""

    latent: np.ndarray | None  # (n, features): added to the features' latent normals
    label: np.ndarray | None  # (n,): popularity points added to the level
    weights: dict[str, np.ndarray]  # per concept feature, (n,): multiplies its term in the label
    newcomer: np.ndarray | None  # (n,) bool: the track is by an artist never seen before


def _row_shifts(shifts: tuple[Shift, ...], seed: int, year: int, n: int) -> _RowShifts:
    """The combined effect of ``shifts`` on ``year``'s ``n`` rows.

    A gradual shift moves a growing share of the rows by the full severity (drawn from the shift's
    own stream); the other shapes move every row by severity x intensity.
    """
    latent: np.ndarray | None = None
    label: np.ndarray | None = None
    weights: dict[str, np.ndarray] = {}
    newcomer: np.ndarray | None = None
    features = list(_LOADINGS)
    for index, shift in enumerate(shifts):
        intensity = shift.intensity(year)
        if intensity == 0.0:
            continue
        rng = np.random.default_rng([seed, year, _SHIFT_STREAM + index])
        if shift.kind == "new_artists":
            chosen = rng.random(n) < shift.severity * intensity
            newcomer = chosen if newcomer is None else newcomer | chosen
            continue
        if shift.shape == "gradual":
            amount = shift.severity * (rng.random(n) < intensity)
        else:
            amount = np.full(n, shift.severity * intensity)
        if shift.kind == "covariate":
            latent = np.zeros((n, len(features))) if latent is None else latent
            for name in shift.features:
                latent[:, features.index(name)] += amount
        elif shift.kind == "label":
            label = amount if label is None else label + amount
        else:  # concept: severity 1 flips the term's sign, 0.5 silences it
            for name in shift.features:
                weights[name] = weights.get(name, np.ones(n)) * (1.0 - 2.0 * amount)
    return _RowShifts(latent, label, weights, newcomer)


def _with_newcomers(
    pool: _ArtistPool, seed: int, year: int, artists: np.ndarray, newcomer: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``artists`` with the ``newcomer`` rows reassigned to artists outside the seed's pool.

    Returns artist indices (newcomers numbered from the pool's size up), names, star power and
    style per row. Newcomers are drawn per year, with names no pooled artist has; their star power
    and style follow the pool's distributions.
    """
    rng = np.random.default_rng([seed, year, _NEWCOMER_STREAM])
    count = int(newcomer.sum())
    size = max(1, int(np.ceil(count / _NEWCOMER_TRACKS)))
    taken = set(pool.names.tolist())
    names: list[str] = []
    while len(names) < size:
        for name in _artist_names(rng, size):
            if name not in taken and len(names) < size:
                taken.add(name)
                names.append(name)
    star = (rng.gamma(_SKEW_SHAPE, 1.0, size=size) - _SKEW_SHAPE) / np.sqrt(_SKEW_SHAPE) * _ARTIST_EFFECT_STD
    style = rng.standard_normal((size, 3))
    who = rng.integers(size, size=count)
    artists, row_names = artists.copy(), pool.names[artists].copy()
    row_star, row_style = pool.effect[artists].copy(), pool.style[artists].copy()
    artists[newcomer] = len(pool.names) + who
    row_names[newcomer] = np.array(names, dtype=object)[who]
    row_star[newcomer] = star[who]
    row_style[newcomer] = style[who]
    return artists, row_names, row_star, row_style


def _draw_artists(pool: _ArtistPool, year: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Pool indices of the artists of ``n`` tracks, drawn among those active in ``year``."""
    roster_year = min(max(year, _ROSTER_YEARS[0]), _ROSTER_YEARS[1])
    active = np.flatnonzero((pool.debut <= roster_year) & (roster_year <= pool.last))
    # Artists have hot years (several tracks) and quiet ones (none), which is what makes the share
    # of returning artists build up over years rather than jump to its final level at once.
    weight = pool.visibility[active] * rng.lognormal(0.0, _HOT_YEAR_SIGMA, size=active.size)
    # Capped, or the heavy tail gives one artist a hundred tracks in a year; real years top out
    # at a few dozen.
    weight = np.minimum(weight, _MAX_WEIGHT_RATIO * np.median(weight))
    return rng.choice(active, size=n, p=weight / weight.sum())


def _draw_features(
    style: np.ndarray, shift: np.ndarray, rng: np.random.Generator, rows: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The ten continuous audio features of tracks whose artists have ``style`` (one row each).

    ``shift`` is the year's latent shift per feature (see :func:`_baseline_shift`), ``rows`` a
    scenario's further shift per row and feature.
    """
    n = style.shape[0]
    own_style = rng.standard_normal((n, 3))
    factors = np.sqrt(_ARTIST_STYLE_SHARE) * style + np.sqrt(1.0 - _ARTIST_STYLE_SHARE) * own_style
    loadings = np.array(list(_LOADINGS.values()))
    own = np.sqrt(1.0 - (loadings**2).sum(axis=1))
    latent = factors @ loadings.T + own * rng.standard_normal((n, len(_LOADINGS)))
    latent = latent + shift
    if rows is not None:
        latent = latent + rows
    return {name: _MARGINS[name].apply(latent[:, i]) for i, name in enumerate(_LOADINGS)}


def _song_names(pool: _ArtistPool, artists: np.ndarray, rng: np.random.Generator) -> list[str]:
    """A title per track; a few feature a guest artist from the pool."""
    titles = _titles(rng, artists.size)
    guests = rng.integers(len(pool.names), size=artists.size)
    featuring = (rng.random(artists.size) < _FEAT_SHARE) & (guests != artists)
    return [
        f"{title} (feat. {pool.names[guest]})" if feat else title
        for title, guest, feat in zip(titles, guests, featuring, strict=True)
    ]


def _album_names(artists: np.ndarray, songs: list[str], rng: np.random.Generator) -> list[str]:
    """One album per artist and year; some tracks are singles, released under their own title."""
    released = np.unique(artists)
    suffixes = rng.integers(len(_ALBUM_SUFFIXES), size=released.size)
    titles = _titles(rng, released.size)
    albums = {
        artist: title + _ALBUM_SUFFIXES[suffix]
        for artist, title, suffix in zip(released.tolist(), titles, suffixes, strict=True)
    }
    single = rng.random(artists.size) < _SINGLE_SHARE
    return [
        song if is_single else albums[a] for a, song, is_single in zip(artists.tolist(), songs, single, strict=True)
    ]
