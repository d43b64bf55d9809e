"""A fake Spotify Web API: a real HTTP server on 127.0.0.1 for the Spotify source's tests.

It serves what the source uses, as Spotify does: ``POST /api/token`` (client credentials, Basic
auth), ``GET /v1/search`` (``offset + limit`` beyond 1000 is a 400) and ``GET /v1/audio-features``
(at most 100 ids). A test scripts failures per route: ``fail`` answers the next requests with the
given statuses (and headers) before serving normally, ``always`` answers every request with one.
Every request is recorded with its arrival time.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

ACCESS_TOKEN = "fake-access-token-4f9c2e"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic()
    method: str
    route: str  # "token", "search" or "audio-features"
    query: dict[str, str]
    status: int


@dataclass
class FakeSpotify:
    client_id: str
    client_secret: str
    # year -> track objects in search order (duplicates allowed, as the real search returns them)
    catalogue: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    always: dict[str, int] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    base_url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- test set-up -----------------------------------------------------------------------------
    def add_year(self, year: int, n: int, *, duplicates: int = 0, popularity: bool = True, seed: int = 0) -> None:
        """``n`` distinct tracks of ``year`` with features; ``duplicates`` of them appear a second time later."""
        rng = random.Random(f"{seed}-{year}")
        tracks = [_track(rng, year, popularity) for _ in range(n)]
        for track in tracks:
            self.features[track["id"]] = _features(rng, track)
        for k in range(duplicates):
            # Repeat an early track further down, on another page, as Spotify's search does.
            tracks.insert(min(len(tracks), 60 + 7 * k), dict(tracks[k]))
        self.catalogue[year] = tracks

    def requests_to(self, route: str) -> list[Seen]:
        return [s for s in self.seen if s.route == route]

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/v1/"

    @property
    def auth_url(self) -> str:
        return f"{self.base_url}/api/token"

    # -- serving -----------------------------------------------------------------------------------
    def answer(
        self, method: str, path: str, query: dict[str, str], headers: Any, body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        route = {"/api/token": "token", "/v1/search": "search"}.get(path)
        if path.rstrip("/") == "/v1/audio-features":
            route = "audio-features"
        if route is None:
            return 404, {}, {"error": {"status": 404, "message": "Service not found"}}
        with self._lock:
            scripted = self.fail.get(route)
            forced = scripted.pop(0) if scripted else None
        if forced is None and route in self.always:
            forced = (self.always[route], {})
        if forced is not None:
            status, extra = forced
            result = (status, extra, {"error": {"status": status, "message": _REASONS.get(status, "Error")}})
        elif route == "token":
            result = self._token(method, headers, body)
        elif headers.get("Authorization") != f"Bearer {ACCESS_TOKEN}":
            result = (401, {}, {"error": {"status": 401, "message": "No token provided"}})
        elif route == "search":
            result = self._search(query)
        else:
            result = self._audio_features(query)
        with self._lock:
            self.seen.append(Seen(time.monotonic(), method, route, query, result[0]))
        return result

    def _token(self, method: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], Any]:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if method != "POST" or form.get("grant_type") != "client_credentials":
            return (
                400,
                {},
                {"error": "unsupported_grant_type", "error_description": "grant_type must be client_credentials"},
            )
        if headers.get("Authorization") != f"Basic {expected}":
            return 400, {}, {"error": "invalid_client", "error_description": "Invalid client secret"}
        return 200, {}, {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 3600}

    def _search(self, query: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        q, kind = query.get("q", ""), query.get("type")
        limit, offset = int(query.get("limit", 20)), int(query.get("offset", 0))
        if kind != "track" or not q.startswith("year:") or not 1 <= limit <= 50:
            return 400, {}, {"error": {"status": 400, "message": "Bad search request"}}
        if offset + limit > 1000:
            return 400, {}, {"error": {"status": 400, "message": "Invalid limit"}}
        catalogue = self.catalogue.get(int(q.removeprefix("year:")), [])
        items = catalogue[offset : offset + limit]
        total = len(catalogue)

        def page_url(at: int) -> str:
            return f"{self.api_base}search?" + urlencode({"query": q, "type": "track", "offset": at, "limit": limit})

        return (
            200,
            {},
            {
                "tracks": {
                    "href": page_url(offset),
                    "items": items,
                    "limit": limit,
                    # Like the real search, "next" follows the total, even past the offset it will serve.
                    "next": page_url(offset + limit) if offset + limit < total else None,
                    "offset": offset,
                    "previous": page_url(max(0, offset - limit)) if offset else None,
                    "total": total,
                }
            },
        )

    def _audio_features(self, query: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        ids = [i for i in query.get("ids", "").split(",") if i]
        if not 1 <= len(ids) <= 100:
            return 400, {}, {"error": {"status": 400, "message": "Invalid ids"}}
        return 200, {}, {"audio_features": [self.features.get(i) for i in ids]}


_REASONS = {429: "API rate limit exceeded", 403: "Forbidden", 500: "Server error", 503: "Service unavailable"}


@contextmanager
def serve(fake: FakeSpotify) -> Iterator[FakeSpotify]:
    """Run ``fake`` on a free port of 127.0.0.1 in a background thread; ``fake.base_url`` is set."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, headers, payload = fake.answer(self.command, parts.path, query, self.headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-spotify", daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- realistic objects ---------------------------------------------------------------------------
def _id(rng: random.Random) -> str:
    return "".join(rng.choice(BASE62) for _ in range(22))


def _track(rng: random.Random, year: int, popularity: bool) -> dict[str, Any]:
    artist_ids = [_id(rng) for _ in range(rng.choice((1, 1, 2)))]
    artists = [
        {
            "external_urls": {"spotify": f"https://open.spotify.com/artist/{a}"},
            "href": f"https://api.spotify.com/v1/artists/{a}",
            "id": a,
            "name": f"Artist {a[:5]}",
            "type": "artist",
            "uri": f"spotify:artist:{a}",
        }
        for a in artist_ids
    ]
    album_id, track_id = _id(rng), _id(rng)
    track: dict[str, Any] = {
        "album": {
            "album_type": "album",
            "artists": artists[:1],
            "id": album_id,
            "name": f"Album {album_id[:6]}",
            "release_date": f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "release_date_precision": "day",
            "total_tracks": rng.randint(8, 16),
            "type": "album",
            "uri": f"spotify:album:{album_id}",
        },
        "artists": artists,
        "disc_number": 1,
        "duration_ms": rng.randint(120_000, 360_000),
        "explicit": rng.random() < 0.2,
        "external_ids": {"isrc": f"USRC1{year % 100:02d}{rng.randint(10000, 99999)}"},
        "href": f"https://api.spotify.com/v1/tracks/{track_id}",
        "id": track_id,
        "is_local": False,
        "name": f"Song {track_id[:6]}",
        "track_number": rng.randint(1, 12),
        "type": "track",
        "uri": f"spotify:track:{track_id}",
    }
    if popularity:
        track["popularity"] = rng.randint(0, 100)
    return track


def _features(rng: random.Random, track: dict[str, Any]) -> dict[str, Any]:
    track_id = track["id"]
    return {
        "acousticness": round(rng.random(), 4),
        "analysis_url": f"https://api.spotify.com/v1/audio-analysis/{track_id}",
        "danceability": round(rng.random(), 3),
        "duration_ms": track["duration_ms"],
        "energy": round(rng.random(), 3),
        "id": track_id,
        "instrumentalness": round(rng.random() * 0.5, 4),
        "key": rng.randint(0, 11),
        "liveness": round(rng.uniform(0.02, 0.9), 4),
        "loudness": round(rng.uniform(-20.0, -2.0), 3),
        "mode": rng.randint(0, 1),
        "speechiness": round(rng.uniform(0.02, 0.4), 4),
        "tempo": round(rng.uniform(60.0, 190.0), 3),
        "time_signature": rng.choice((3, 4, 4, 4, 5)),
        "track_href": f"https://api.spotify.com/v1/tracks/{track_id}",
        "type": "audio_features",
        "uri": f"spotify:track:{track_id}",
        "valence": round(rng.random(), 3),
    }
