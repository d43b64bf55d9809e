"""Landing files in the awkward shapes real exports have, each with the column map that reads it.

A Kaggle "top songs" CSV, for one, is Latin-1, has audio features as 0-100 integers, the duration in
seconds, no id column, an empty first header (a saved row index) and its own column names.
:func:`write_awkward` writes a clean table (see :func:`clean_tracks`) in any mix of those shapes and
returns the column map, using documented keys only, under which the file source reads it back as
the clean table.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd

from tracks import make_tracks

UNIT_FEATURES = ("danceability", "energy", "speechiness", "acousticness", "instrumentalness", "liveness", "valence")
SHAPES = ("latin-1", "semicolons", "0-100", "seconds", "no-id", "empty-header", "renamed")
# The renames of "renamed": the names a Kaggle export uses for the columns the model reads as text.
KAGGLE_NAMES = {"artist": "artist_name", "title": "song_name", "album": "album_name", "pop": "popularity"}


def clean_tracks(year: int, n: int = 200, level: float = 50.0, seed: int = 0) -> pd.DataFrame:
    """:func:`tracks.make_tracks` with values every shape can carry exactly: unit features in
    hundredths, whole seconds, and two artists whose names are not ASCII."""
    frame = make_tracks(year, n=n, level=level, seed=seed)
    frame[list(UNIT_FEATURES)] = frame[list(UNIT_FEATURES)].round(2)
    frame["duration_ms"] = frame["duration_ms"] // 1000 * 1000
    frame.loc[frame.index[0], "artist_name"] = "Beyoncé"
    frame.loc[frame.index[-1], "artist_name"] = "Sigur Rós"
    return frame


def hashed_id(*values: str) -> str:
    """The id the file source makes from ``id_from`` values (docs/column-map.md, ``id_from``)."""
    return hashlib.sha1("\x1f".join(values).encode("utf-8")).hexdigest()[:16]


def write_awkward(folder: Path, frame: pd.DataFrame, shapes: tuple[str, ...], name: str) -> tuple[Path, dict[str, Any]]:
    """Write ``frame`` (from :func:`clean_tracks`) as ``folder/name`` in ``shapes``; return the path
    and the column map that reads it back as ``frame`` (with hashed ids under "no-id")."""
    unknown = set(shapes) - set(SHAPES)
    assert not unknown, unknown
    out = frame.copy()
    column_map: dict[str, Any] = {}
    renames: dict[str, str] = {}
    scale: dict[str, Any] = {}
    if "0-100" in shapes:
        for feature in (f for f in UNIT_FEATURES if f in out.columns):
            out[feature] = (out[feature] * 100).round().astype(int)
            scale[feature] = {"from": [0, 100], "to": [0, 1]}
    if "seconds" in shapes:
        out = out.rename(columns={"duration_ms": "dur"})
        out["dur"] = out["dur"] // 1000
        renames["dur"] = "duration_ms"
        scale["duration_ms"] = {"multiply": 1000}
    if "renamed" in shapes:
        out = out.rename(columns={v: k for k, v in KAGGLE_NAMES.items()})
        renames |= KAGGLE_NAMES
    if "no-id" in shapes:
        out = out.drop(columns="track_id")
        column_map["id_from"] = ["artist_name", "song_name"]
        if "empty-header" in shapes:  # the empty header holds a row number, as in a Kaggle export
            out.index = pd.RangeIndex(1, len(out) + 1)
    elif "empty-header" in shapes:  # a saved pandas index that holds the ids
        out = out.set_index("track_id")
        renames["Unnamed: 0"] = "track_id"
    if renames:
        column_map["columns"] = renames
    if scale:
        column_map["scale"] = scale
    csv: dict[str, Any] = {"index": "empty-header" in shapes, "encoding": "utf-8"}
    if "empty-header" in shapes:
        csv["index_label"] = ""
    if "latin-1" in shapes:
        csv["encoding"] = column_map["encoding"] = "latin-1"
    if "semicolons" in shapes:
        csv["sep"] = column_map["delimiter"] = ";"
        csv["decimal"] = column_map["decimal"] = ","
    path = folder / name
    out.to_csv(path, **csv)
    return path, column_map
