"""Writers of the bad landing files users really have, for unit and end-to-end tests alike.

Each ``write_*`` function writes one file into ``folder`` and returns its path; ``frame`` is a
Spotify-shaped table such as :func:`tracks.make_tracks` returns. :data:`UNREADABLE` maps each kind
of file the file source must refuse (naming the file and the fix) to its writer, with the words
its error must contain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

Writer = Callable[[Path, pd.DataFrame], Path]


def digest(path: Path) -> str:
    """The SHA-256 of a file's bytes: landing files must never change."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digests(folder: Path) -> dict[str, str]:
    """The digest of every file in ``folder``, by name."""
    return {p.name: digest(p) for p in sorted(folder.iterdir()) if p.is_file()}


def write_csv(folder: Path, frame: pd.DataFrame, name: str = "tracks.csv") -> Path:
    """A well-formed UTF-8 CSV."""
    path = folder / name
    frame.to_csv(path, index=False)
    return path


def write_empty_csv(folder: Path, frame: pd.DataFrame, name: str = "empty.csv") -> Path:
    """A 0-byte CSV (an interrupted copy)."""
    path = folder / name
    path.write_bytes(b"")
    return path


def write_latin1_csv(folder: Path, frame: pd.DataFrame, name: str = "latin1.csv") -> Path:
    """A CSV exported by a tool that writes Latin-1: accented artist names are not UTF-8."""
    frame = frame.copy()
    frame.loc[frame.index[0], "artist_name"] = "Beyoncé"
    frame.loc[frame.index[-1], "artist_name"] = "Sigur Rós"
    path = folder / name
    frame.to_csv(path, index=False, encoding="latin-1")
    return path


def write_semicolon_csv(folder: Path, frame: pd.DataFrame, name: str = "semicolon.csv") -> Path:
    """A CSV with semicolons as delimiter and decimal commas (a European spreadsheet export)."""
    path = folder / name
    frame.to_csv(path, index=False, sep=";", decimal=",")
    return path


def write_truncated_parquet(folder: Path, frame: pd.DataFrame, name: str = "truncated.parquet") -> Path:
    """A Parquet file cut in the middle (an interrupted upload)."""
    path = folder / name
    frame.to_parquet(path, index=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_random_parquet(folder: Path, frame: pd.DataFrame, name: str = "random.parquet") -> Path:
    """Random bytes under a .parquet name."""
    path = folder / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def write_bom_csv(folder: Path, frame: pd.DataFrame, name: str = "bom.csv") -> Path:
    """A UTF-8 CSV starting with a byte-order mark (Excel's "CSV UTF-8"): readable."""
    path = folder / name
    frame.to_csv(path, index=False, encoding="utf-8-sig")
    return path


def write_header_only_csv(folder: Path, frame: pd.DataFrame, name: str = "header_only.csv") -> Path:
    """A CSV with the header line and no rows: readable, contributes nothing."""
    path = folder / name
    frame.iloc[:0].to_csv(path, index=False)
    return path


def write_non_data_file(folder: Path, frame: pd.DataFrame, name: str = "README.txt") -> Path:
    """A file that is no data (notes, a checksum list): ignored by its suffix."""
    path = folder / name
    path.write_text("exported from the warehouse on 2026-01-01\n")
    return path


def write_swapped_columns_csv(folder: Path, frame: pd.DataFrame, name: str = "swapped.csv") -> Path:
    """A CSV whose ``energy`` and ``loudness`` headers were swapped: readable, every row out of range."""
    path = folder / name
    frame.rename(columns={"energy": "loudness", "loudness": "energy"}).to_csv(path, index=False)
    return path


# kind -> (writer, words the error must contain: the fix)
UNREADABLE: dict[str, tuple[Writer, str]] = {
    "empty_csv": (write_empty_csv, "is empty"),
    "latin1_csv": (write_latin1_csv, '"encoding": "latin-1"'),
    "semicolon_csv": (write_semicolon_csv, '"delimiter": ";"'),
    "truncated_parquet": (write_truncated_parquet, "not a readable Parquet file"),
    "random_parquet": (write_random_parquet, "not a readable Parquet file"),
}
