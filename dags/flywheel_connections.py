"""Airflow connections the flywheel DAGs hand to the library (imported inside tasks only).

The library reads no Airflow state itself; a task resolves what it needs here and passes it on.
"""

from __future__ import annotations

from typing import Any


def spotify_credentials(settings: Any) -> Any:
    """Client id (login) and secret (password) of the ``spotify_default`` connection, for the
    Spotify source only; None without one (the library then reads SPOTIPY_CLIENT_ID/SECRET).
    Passed straight to the library: never logged, returned or pushed to XCom."""
    if settings.source != "spotify":
        return None
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from driftwheel.sources.spotify import SpotifyCredentials

    try:
        conn = Connection.get("spotify_default")
    except AirflowNotFoundException:
        return None
    return SpotifyCredentials(client_id=conn.login or "", client_secret=conn.password or "")
