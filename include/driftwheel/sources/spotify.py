"""The Spotify Web API source: one release year of tracks, fetched with spotipy.

:func:`fetch_year` searches ``year:Y`` page by page, then asks for the audio features of the
tracks found. Every raw JSON response is written to the landing zone the moment it arrives
(``<landing>/spotify/year=Y/search_0000.json``, ``audio_features_0000.json``, the number being
the index of the first item), so nothing fetched is lost when a later call fails. Only then are
the responses joined into ``<landing>/tracks_Y.csv``, in the schema of the seed data (and of the
synthetic source), which the file source and validation read like any other landing file.

Two restrictions of the Web API end the fetch with :class:`SpotifySourceError` rather than with
a half-empty CSV: the audio-features endpoint answers 403 for apps created after 2024-11-27, and
a search may return tracks without ``popularity``, the model's target. In both cases the file
source (``FLYWHEEL_SOURCE=file`` and a landing folder of CSVs) is the way forward.

Credentials are passed in (the DAG reads the ``spotify_default`` connection, a notebook may use
:meth:`SpotifyCredentials.from_env`); they are never logged nor written, and the access token is
kept in memory only.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import requests
import spotipy
from spotipy.cache_handler import MemoryCacheHandler
from spotipy.exceptions import SpotifyException, SpotifyOauthError
from spotipy.oauth2 import SpotifyClientCredentials
from spotipy.util import Retry

from driftwheel import store
from driftwheel.config import SEED_COLUMNS, SEED_INT_COLUMNS, SPOTIFY_AUDIO_FEATURES
from driftwheel.sources.file import LandingError

logger = logging.getLogger(__name__)

__all__ = [
    "COLUMNS",
    "RetryPolicy",
    "SpotifyCredentials",
    "SpotifySourceError",
    "fetch_year",
    "raw_dir",
]

DEFAULT_API_BASE = "https://api.spotify.com/v1/"
DEFAULT_AUTH_URL = SpotifyClientCredentials.OAUTH_TOKEN_URL
# The search endpoint refuses offset + limit beyond this, whatever the total it reports.
SEARCH_OFFSET_LIMIT = 1000
MAX_PAGE_SIZE = 50
AUDIO_FEATURES_BATCH = 100

COLUMNS = SEED_COLUMNS

FILE_SOURCE_HINT = (
    "Use the file source instead: FLYWHEEL_SOURCE=file with FLYWHEEL_LANDING_DIR pointing at a folder "
    "of CSVs in the seed schema (year, track_id, artist_name, song_name, album_name, the 13 audio "
    "features, popularity)."
)


class SpotifySourceError(LandingError):
    """The Spotify Web API cannot provide the requested year; the message says why and what to do."""


@dataclass(frozen=True)
class SpotifyCredentials:
    """A Spotify app's client id and secret (client-credentials flow). The repr hides the secret."""

    client_id: str
    client_secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.client_id or not self.client_secret:
            raise ValueError("Spotify credentials need both a client id and a client secret")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SpotifyCredentials:
        """Credentials from ``SPOTIPY_CLIENT_ID`` and ``SPOTIPY_CLIENT_SECRET`` (spotipy's names),
        else ``SPOTIFY_CLIENT_ID`` and ``SPOTIFY_CLIENT_SECRET``.

        Raises :class:`SpotifySourceError` naming the variable that is missing or empty.
        """
        env = os.environ if env is None else env
        pairs = [("SPOTIPY_CLIENT_ID", "SPOTIPY_CLIENT_SECRET"), ("SPOTIFY_CLIENT_ID", "SPOTIFY_CLIENT_SECRET")]
        for id_key, secret_key in pairs:
            if env.get(id_key) and env.get(secret_key):
                return cls(client_id=env[id_key], client_secret=env[secret_key])
        # Name what is missing of the pair the user started to set (spotipy's when neither).
        started = next((pair for pair in pairs if any(env.get(k) for k in pair)), pairs[0])
        missing = [k for k in started if not env.get(k)]
        raise SpotifySourceError(
            f"Spotify credentials: {' and '.join(missing)} not set (or an Airflow connection spotify_default "
            "with the client id as login and the client secret as password)"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a request is retried before the fetch fails (urllib3's ``Retry`` does the work).

    429 and 503 wait out the ``Retry-After`` header; 500, 502 and 504 (and 429/503 without the
    header) back off ``backoff_factor * 2 ** (n - 1)`` seconds, the first retry at once.
    """

    retries: int = 4
    backoff_factor: float = 0.5
    # Spotify answers a banned app with a Retry-After of many hours; waiting that long inside a
    # task is worse than failing, so longer waits are cut to this and the retries then run out.
    max_retry_after: int = 120
    timeout: float = 10.0


def raw_dir(landing_dir: Path, year: int) -> Path:
    """The folder holding ``year``'s raw JSON responses under ``landing_dir``."""
    return landing_dir / "spotify" / f"year={year}"


def fetch_year(
    year: int,
    landing_dir: Path,
    credentials: SpotifyCredentials,
    *,
    api_base: str | None = None,
    auth_url: str | None = None,
    max_tracks: int = 2000,
    page_size: int = MAX_PAGE_SIZE,
    retry: RetryPolicy = RetryPolicy(),
) -> list[Path]:
    """Land the tracks released in ``year``: raw JSON responses first, then ``tracks_<year>.csv``.

    ``api_base`` (default ``https://api.spotify.com/v1/``) and ``auth_url`` (default
    ``https://accounts.spotify.com/api/token``) point the client elsewhere, e.g. at a test server.
    At most ``min(max_tracks, 1000)`` search results are read: the search endpoint serves no
    offset beyond 1000. Tracks are de-duplicated on their id, first occurrence kept.

    Returns the files written, in order: the raw responses, then the CSV last. Raises
    :class:`SpotifySourceError` when the API fails, refuses the credentials, restricts the
    audio-features endpoint (403) or returns tracks without popularity; the raw responses
    fetched until then stay on disk.
    """
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
    if max_tracks < 1:
        raise ValueError(f"max_tracks must be positive, got {max_tracks}")
    raw = raw_dir(landing_dir, year)
    raw.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    with _redacted_spotipy_logs(credentials), requests.Session() as session:
        client = _client(credentials, session, api_base, auth_url, retry)
        found = _search_year(client, year, raw, written, min(max_tracks, SEARCH_OFFSET_LIMIT), page_size, retry)
        tracks = _unique(found)
        logger.info("spotify search year:%d: %d tracks, %d unique", year, len(found), len(tracks))
        _require_popularity(tracks, year, raw)
        features = _audio_features(client, list(tracks), raw, written, retry)

    frame = _to_frame(year, tracks, features)
    csv_path = landing_dir / f"tracks_{year}.csv"
    store.write_frame(frame, csv_path)
    written.append(csv_path)
    logger.info("landed %d spotify tracks of %d in %s (raw responses in %s)", len(frame), year, csv_path, raw)
    return written


# -- the client ---------------------------------------------------------------------------------
def _client(
    credentials: SpotifyCredentials,
    session: requests.Session,
    api_base: str | None,
    auth_url: str | None,
    policy: RetryPolicy,
) -> spotipy.Spotify:
    # spotipy builds the same urllib3 Retry when given retries=...; building it here adds the cap on
    # Retry-After, and sharing the session gives the token request the same retries.
    retry = Retry(
        total=policy.retries,
        connect=None,
        read=False,
        allowed_methods=frozenset({"GET", "POST"}),
        status=policy.retries,
        backoff_factor=policy.backoff_factor,
        status_forcelist=spotipy.Spotify.default_retry_codes,
        retry_after_max=policy.max_retry_after,
    )
    adapter = requests.adapters.HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    auth = SpotifyClientCredentials(
        client_id=credentials.client_id,
        client_secret=credentials.client_secret,
        requests_session=session,
        requests_timeout=policy.timeout,
        # The default cache handler writes the access token to a .cache file in the working directory.
        cache_handler=MemoryCacheHandler(),
    )
    if auth_url is not None:
        # spotipy reads the token URL as self.OAUTH_TOKEN_URL: an instance attribute redirects this
        # manager only, without touching the class other clients in the process use.
        auth.OAUTH_TOKEN_URL = auth_url
    client = spotipy.Spotify(auth_manager=auth, requests_session=session, requests_timeout=policy.timeout)
    if api_base is not None:
        client.prefix = api_base.rstrip("/") + "/"
    return client


def _call(
    what: str, policy: RetryPolicy, fn: Callable[..., Any], *args: Any, forbidden: str = "", **kwargs: Any
) -> Any:
    """``fn(*args, **kwargs)``, its JSON result; spotipy's and requests' failures become :class:`SpotifySourceError`.

    ``forbidden``, when given, is the whole message for a 403 answer.
    """
    try:
        result = fn(*args, **kwargs)
    except SpotifyOauthError as err:
        raise SpotifySourceError(
            f"Spotify refused the client credentials ({err.error}: {err.error_description}); "
            f"check the spotify_default connection or SPOTIFY_CLIENT_ID/SPOTIFY_CLIENT_SECRET"
        ) from err
    except SpotifyException as err:
        if err.http_status == 403 and forbidden:
            raise SpotifySourceError(forbidden) from err
        if "Max Retries" in str(err.msg):
            # spotipy reports every exhausted retry as a 429; urllib3's reason names the real status.
            raise SpotifySourceError(
                f"Spotify Web API {what}: gave up after {policy.retries} retries: {err.reason}"
            ) from err
        raise SpotifySourceError(f"Spotify Web API {what}: HTTP {err.http_status}: {str(err.msg).strip()}") from err
    except requests.RequestException as err:
        # The token request is not wrapped by spotipy, so its exhausted retries arrive here.
        raise SpotifySourceError(f"Spotify Web API {what}: gave up after {policy.retries} retries: {err}") from err
    if not isinstance(result, (dict, list)):
        raise SpotifySourceError(f"Spotify Web API {what}: the response is not JSON")
    return result


# -- fetching -----------------------------------------------------------------------------------
def _search_year(
    client: spotipy.Spotify,
    year: int,
    raw: Path,
    written: list[Path],
    max_items: int,
    page_size: int,
    policy: RetryPolicy,
) -> list[dict[str, Any]]:
    """Every track object of the ``year:<year>`` search up to ``max_items``, in the API's order."""
    found: list[dict[str, Any]] = []
    offset = 0
    while offset < max_items:
        limit = min(page_size, max_items - offset)
        page = _call(
            f"search year:{year} offset {offset}",
            policy,
            client.search,
            q=f"year:{year}",
            type="track",
            limit=limit,
            offset=offset,
        )
        written.append(_write_json(raw / f"search_{offset:04d}.json", page))
        result = page.get("tracks") or {}
        items = result.get("items") or []
        # The search endpoint sometimes returns null entries in place of tracks it cannot serve.
        found.extend(item for item in items if item and item.get("id"))
        if len(items) < limit or not result.get("next"):
            break
        offset += limit
    return found


def _unique(tracks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    unique: dict[str, dict[str, Any]] = {}
    for track in tracks:
        unique.setdefault(track["id"], track)
    return unique


def _require_popularity(tracks: dict[str, dict[str, Any]], year: int, raw: Path) -> None:
    missing = sum(1 for t in tracks.values() if t.get("popularity") is None)
    if missing:
        raise SpotifySourceError(
            f"Spotify returned {missing} of {len(tracks)} tracks of {year} without 'popularity', the "
            f"flywheel's target: the Web API does not provide it to this app. {FILE_SOURCE_HINT} "
            f"The raw search responses are kept in {raw}."
        )


def _audio_features(
    client: spotipy.Spotify, ids: list[str], raw: Path, written: list[Path], policy: RetryPolicy
) -> dict[str, dict[str, Any]]:
    """Audio-feature objects by track id; ids the API knows no features for are absent."""
    forbidden = (
        "Spotify answered 403 Forbidden on the audio-features endpoint: the Web API restricts audio "
        "features for apps created after 2024-11-27, so this app cannot fetch the 13 features the model "
        f"needs. {FILE_SOURCE_HINT} The raw responses fetched so far are kept in {raw}."
    )
    features: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), AUDIO_FEATURES_BATCH):
        batch = ids[start : start + AUDIO_FEATURES_BATCH]
        answer = _call(f"audio-features batch {start}", policy, client.audio_features, batch, forbidden=forbidden)
        # spotipy unwraps {"audio_features": [...]}; wrapping it again lands the response as sent.
        written.append(_write_json(raw / f"audio_features_{start:04d}.json", {"audio_features": answer}))
        features.update((f["id"], f) for f in answer if f and f.get("id"))
    absent = len(ids) - len(features)
    if absent:
        logger.warning(
            "Spotify has no audio features for %d of %d tracks; validation will see them empty", absent, len(ids)
        )
    return features


def _to_frame(year: int, tracks: dict[str, dict[str, Any]], features: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per track in :data:`COLUMNS` order; a track without features keeps empty feature cells."""
    rows = []
    for track_id, track in tracks.items():
        artists = track.get("artists") or [{}]
        feature = features.get(track_id, {})
        rows.append(
            {
                "year": year,
                "track_id": track_id,
                # The seed data names one artist per track: the first listed is the primary one.
                "artist_name": artists[0].get("name"),
                "song_name": track.get("name"),
                "album_name": (track.get("album") or {}).get("name"),
                **{name: feature.get(name) for name in SPOTIFY_AUDIO_FEATURES},
                "popularity": track["popularity"],
            }
        )
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    # Nullable integers keep "4" from becoming "4.0" in the CSV when a track has no features.
    return frame.astype({c: "Int64" for c in SEED_INT_COLUMNS})


def _write_json(path: Path, payload: Any) -> Path:
    return store.write_text(path, json.dumps(payload, ensure_ascii=False))


# -- keeping the secret out of the logs ---------------------------------------------------------
_AUTH_HEADER = re.compile(r"\b(Basic|Bearer) [A-Za-z0-9._~+/=-]+")
_SPOTIPY_LOGGERS = ("spotipy.client", "spotipy.oauth2", "spotipy.util")


class _Redact(logging.Filter):
    """Masks the secret and Authorization header values in a record's message."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _AUTH_HEADER.sub(r"\1 ***", message)
        for secret in self._secrets:
            redacted = redacted.replace(secret, "***")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


@contextmanager
def _redacted_spotipy_logs(credentials: SpotifyCredentials) -> Iterator[None]:
    """Redact spotipy's own records while the block runs.

    spotipy logs the token request's headers at DEBUG, and the Basic header is the client id and
    secret in base64; a DEBUG log level (Airflow's, a notebook's) would otherwise write the secret.
    """
    basic = base64.b64encode(f"{credentials.client_id}:{credentials.client_secret}".encode()).decode()
    redact = _Redact((credentials.client_secret, basic))
    loggers = [logging.getLogger(name) for name in _SPOTIPY_LOGGERS]
    for each in loggers:
        each.addFilter(redact)
    try:
        yield
    finally:
        for each in loggers:
            each.removeFilter(redact)
