"""The Spotify source against a fake Web API on 127.0.0.1: what lands, and how failures read."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from driftwheel.config import SPOTIFY_AUDIO_FEATURES, DatasetSpec, FileSourceConfig
from driftwheel.sources import file as file_source
from driftwheel.sources.spotify import (
    COLUMNS,
    RetryPolicy,
    SpotifyCredentials,
    SpotifySourceError,
    fetch_year,
    raw_dir,
)
from spotify_fake import ACCESS_TOKEN, FakeSpotify, serve

SEED_CSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "spotify_seed" / "tracks_2008_2019.csv"
CREDENTIALS = SpotifyCredentials(client_id="test-client-id-1234", client_secret="s3cr3t-do-not-leak-9b7e")
BASIC = base64.b64encode(f"{CREDENTIALS.client_id}:{CREDENTIALS.client_secret}".encode()).decode()
YEAR = 2016
FAST = RetryPolicy(retries=2, backoff_factor=0.05, timeout=5.0)


@pytest.fixture
def fake() -> Iterator[FakeSpotify]:
    """121 search results for 2016 (120 distinct tracks, one repeated): three pages, two feature batches."""
    spotify = FakeSpotify(CREDENTIALS.client_id, CREDENTIALS.client_secret)
    spotify.add_year(YEAR, 120, duplicates=1)
    with serve(spotify):
        yield spotify


def fetch(fake: FakeSpotify, landing: Path, **kwargs: object) -> list[Path]:
    return fetch_year(YEAR, landing, CREDENTIALS, api_base=fake.api_base, auth_url=fake.auth_url, **kwargs)  # type: ignore[arg-type]


def test_lands_raw_responses_then_a_deduplicated_csv_in_the_seed_schema(fake: FakeSpotify, tmp_path: Path) -> None:
    written = fetch(fake, tmp_path)

    raw = raw_dir(tmp_path, YEAR)
    csv = tmp_path / f"tracks_{YEAR}.csv"
    assert written == [
        raw / "search_0000.json",
        raw / "search_0050.json",
        raw / "search_0100.json",
        raw / "audio_features_0000.json",
        raw / "audio_features_0100.json",
        csv,
    ]
    # Raw first: every response is on disk before the CSV is written.
    assert max(p.stat().st_mtime_ns for p in written[:-1]) <= csv.stat().st_mtime_ns
    assert not list(tmp_path.rglob("*.tmp"))
    # The raw files are the responses as served.
    first_page = json.loads((raw / "search_0000.json").read_text())
    assert [t["id"] for t in first_page["tracks"]["items"]] == [t["id"] for t in fake.catalogue[YEAR][:50]]
    assert len(json.loads((raw / "audio_features_0100.json").read_text())["audio_features"]) == 20

    frame = pd.read_csv(csv)
    assert list(frame.columns) == list(COLUMNS)
    if SEED_CSV.exists():
        assert list(frame.columns) == list(pd.read_csv(SEED_CSV, nrows=0).columns)
    assert len(frame) == 120 and frame["track_id"].is_unique
    assert (frame["year"] == YEAR).all()

    # Each row joins a track with its own features.
    by_id = frame.set_index("track_id")
    for track in fake.catalogue[YEAR][::17]:
        row, features = by_id.loc[track["id"]], fake.features[track["id"]]
        assert row["song_name"] == track["name"]
        assert row["artist_name"] == track["artists"][0]["name"]
        assert row["album_name"] == track["album"]["name"]
        assert row["popularity"] == track["popularity"]
        assert [row[f] for f in SPOTIFY_AUDIO_FEATURES] == pytest.approx([features[f] for f in SPOTIFY_AUDIO_FEATURES])

    # The search asked for the year, and the whole fetch used one token.
    assert {s.query["q"] for s in fake.requests_to("search")} == {f"year:{YEAR}"}
    assert len(fake.requests_to("token")) == 1

    # The CSV is an ordinary landing file for the file source and validation.
    batch = file_source.read_period(FileSourceConfig(pattern=csv.name), DatasetSpec(), tmp_path, YEAR)
    assert len(batch.frame) == 120


def test_search_never_asks_beyond_offset_1000(tmp_path: Path) -> None:
    spotify = FakeSpotify(CREDENTIALS.client_id, CREDENTIALS.client_secret)
    spotify.add_year(YEAR, 1100)  # the fake answers 400 to offset + limit > 1000, as Spotify does
    with serve(spotify):
        fetch(spotify, tmp_path / "all", max_tracks=2000)
        fetch(spotify, tmp_path / "some", max_tracks=120)

    searches = spotify.requests_to("search")
    assert all(s.status == 200 for s in searches)
    assert max(int(s.query["offset"]) + int(s.query["limit"]) for s in searches) == 1000
    assert len(pd.read_csv(tmp_path / "all" / f"tracks_{YEAR}.csv")) == 1000
    assert len(pd.read_csv(tmp_path / "some" / f"tracks_{YEAR}.csv")) == 120


def test_a_429_waits_out_retry_after_and_then_succeeds(fake: FakeSpotify, tmp_path: Path) -> None:
    fake.fail["search"] = [(429, {"Retry-After": "1"})]

    fetch(fake, tmp_path)

    first, second = fake.requests_to("search")[:2]
    assert (first.status, second.status) == (429, 200)
    assert second.query["offset"] == first.query["offset"] == "0"
    assert second.at - first.at >= 0.95
    assert len(pd.read_csv(tmp_path / f"tracks_{YEAR}.csv")) == 120


def test_a_transient_5xx_is_retried(fake: FakeSpotify, tmp_path: Path) -> None:
    fake.fail["token"] = [(503, {})]
    fake.fail["search"] = [(500, {}), (502, {})]
    fake.fail["audio-features"] = [(503, {})]

    fetch(fake, tmp_path, retry=FAST)

    assert [s.status for s in fake.requests_to("search")] == [500, 502, 200, 200, 200]
    assert [s.status for s in fake.requests_to("audio-features")] == [503, 200, 200]
    assert len(pd.read_csv(tmp_path / f"tracks_{YEAR}.csv")) == 120


def test_a_persistent_500_fails_clearly_after_the_retries(fake: FakeSpotify, tmp_path: Path) -> None:
    fake.always["search"] = 500

    with pytest.raises(SpotifySourceError, match=r"search year:2016 offset 0: gave up after 2 retries: .*500"):
        fetch(fake, tmp_path, retry=FAST)

    assert len(fake.requests_to("search")) == 3  # the first try and two retries
    assert not (tmp_path / f"tracks_{YEAR}.csv").exists()


def test_a_403_on_audio_features_names_the_restriction_and_the_file_source(fake: FakeSpotify, tmp_path: Path) -> None:
    fake.always["audio-features"] = 403

    with pytest.raises(SpotifySourceError) as caught:
        fetch(fake, tmp_path)

    message = str(caught.value)
    assert "403" in message and "audio-features" in message and "2024-11-27" in message
    assert "FLYWHEEL_SOURCE=file" in message
    # A 403 is an answer, not a hiccup: asked once, and what was fetched before it is kept.
    assert len(fake.requests_to("audio-features")) == 1
    raw = raw_dir(tmp_path, YEAR)
    assert sorted(p.name for p in raw.iterdir()) == ["search_0000.json", "search_0050.json", "search_0100.json"]
    assert not (tmp_path / f"tracks_{YEAR}.csv").exists()


def test_tracks_without_popularity_fail_clearly(tmp_path: Path) -> None:
    spotify = FakeSpotify(CREDENTIALS.client_id, CREDENTIALS.client_secret)
    spotify.add_year(YEAR, 30, popularity=False)
    with serve(spotify), pytest.raises(SpotifySourceError, match=r"30 of 30 tracks of 2016 without 'popularity'"):
        fetch(spotify, tmp_path)

    assert (raw_dir(tmp_path, YEAR) / "search_0000.json").exists()
    assert spotify.requests_to("audio-features") == []
    assert not (tmp_path / f"tracks_{YEAR}.csv").exists()


def test_wrong_credentials_fail_clearly(fake: FakeSpotify, tmp_path: Path) -> None:
    wrong = SpotifyCredentials(CREDENTIALS.client_id, "not-the-secret")
    with pytest.raises(SpotifySourceError, match="refused the client credentials.*invalid_client"):
        fetch_year(YEAR, tmp_path, wrong, api_base=fake.api_base, auth_url=fake.auth_url)
    assert fake.requests_to("search") == []


def test_the_secret_is_never_written_nor_logged(
    fake: FakeSpotify, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # spotipy logs request headers at DEBUG; the token would go to ./.cache without an in-memory cache.
    caplog.set_level(logging.DEBUG)
    monkeypatch.chdir(tmp_path)
    fetch(fake, tmp_path / "ok")
    fake.always["audio-features"] = 403
    with pytest.raises(SpotifySourceError) as caught:
        fetch(fake, tmp_path / "forbidden")

    assert any(r.name.startswith("spotipy") for r in caplog.records)  # the logs were captured at all
    secrets = (CREDENTIALS.client_secret, BASIC, ACCESS_TOKEN)
    for secret in secrets:
        assert secret not in caplog.text
        assert secret not in str(caught.value) and secret not in repr(caught.value)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 5 and not (tmp_path / ".cache").exists()
    for path in files:
        content = path.read_bytes()
        assert not any(secret.encode() in content for secret in secrets), path
    assert CREDENTIALS.client_secret not in repr(CREDENTIALS) and CREDENTIALS.client_secret not in str(CREDENTIALS)


def test_credentials_from_env() -> None:
    env = {"SPOTIFY_CLIENT_ID": "an-id", "SPOTIFY_CLIENT_SECRET": "a-secret"}
    assert SpotifyCredentials.from_env(env) == SpotifyCredentials("an-id", "a-secret")
    # spotipy's own variable names come first.
    spotipy_env = {**env, "SPOTIPY_CLIENT_ID": "id-2", "SPOTIPY_CLIENT_SECRET": "secret-2"}
    assert SpotifyCredentials.from_env(spotipy_env) == SpotifyCredentials("id-2", "secret-2")
    with pytest.raises(SpotifySourceError, match="SPOTIFY_CLIENT_SECRET not set"):
        SpotifyCredentials.from_env({"SPOTIFY_CLIENT_ID": "an-id"})
    with pytest.raises(
        SpotifySourceError, match="SPOTIPY_CLIENT_ID and SPOTIPY_CLIENT_SECRET not set.*spotify_default"
    ):
        SpotifyCredentials.from_env({})
    with pytest.raises(ValueError):
        SpotifyCredentials("an-id", "")


def test_the_spotify_source_lands_a_year_once_for_validation(fake: FakeSpotify, tmp_path: Path) -> None:
    from driftwheel import sources
    from driftwheel.config import Settings, SpotifyConfig

    settings = Settings(
        state_dir=tmp_path,
        source="spotify",
        spotify=SpotifyConfig(max_tracks=100, api_base=fake.api_base, auth_url=fake.auth_url),
    )
    landed = sources.land_period(settings, YEAR, CREDENTIALS)
    assert landed.files == (tmp_path / "landing" / "spotify" / f"tracks_{YEAR}.csv",)
    searches = len(fake.requests_to("search"))
    assert searches == 2  # max_tracks=100 in pages of 50

    again = sources.land_period(settings, YEAR, CREDENTIALS)
    assert again.files == landed.files and len(fake.requests_to("search")) == searches  # not fetched twice

    batch = sources.read_period(settings, YEAR)
    # 100 search results, one of them the fixture's repeated track.
    assert len(batch.frame) == 99 and set(SPOTIFY_AUDIO_FEATURES) <= set(batch.frame.columns)
