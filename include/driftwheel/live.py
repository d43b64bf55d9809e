"""Live mode: notice new landing files, count their labeled rows, and say when a retrain is due.

The yearly flywheel replays closed periods. Live, data keeps arriving: files are dropped into the
landing folder (or the Spotify source pulls the current year into it), and every week
:func:`collect_new_tracks` looks for files it has not seen. A file is known by its content hash, so
a renamed copy is not counted twice and a rewritten file counts again. Its labeled rows (a
target value present) are counted per period and kept as *pending* in the manifest
``<state>/live/manifest-<source>-<folder hash>.json``. :func:`due_periods` (pure) names the periods whose pending rows
reach :attr:`LivePolicy.min_new_rows`; :func:`announce` marks them as handed to training, which
runs the yearly pipeline for each of them (the DAG passes the period as the run's ``year``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftwheel import sources, store
from driftwheel.config import LivePolicy, Settings
from driftwheel.sources import file as file_source

logger = logging.getLogger(__name__)

__all__ = ["NewFile", "announce", "collect_new_tracks", "due_periods", "pending_rows", "retrain_conf", "scan_new_files"]


@dataclass(frozen=True)
class NewFile:
    name: str
    sha256: str
    labeled_rows: Mapping[int, int] = field(default_factory=dict)  # period -> rows with a target


def manifest_path(settings: Settings) -> Path:
    """One manifest per watched folder: rows pending in one folder say nothing about another."""
    folder = hashlib.sha256(str(settings.landing_dir.resolve()).encode()).hexdigest()[:12]
    return settings.state_dir / "live" / f"manifest-{settings.source}-{folder}.json"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"files": {}}


def _save(path: Path, manifest: Mapping[str, Any]) -> None:
    store.write_text(path, json.dumps(manifest, indent=1, sort_keys=True))


def scan_new_files(settings: Settings) -> list[NewFile]:
    """The landing files (``settings.landing_dir``) whose content the manifest has not seen, by name.

    Their labeled rows (a target value present; unlabeled rows cannot train) come from the landing
    index, so a file is parsed once for live mode and the yearly runs alike.
    """
    known = {entry["sha256"] for entry in _load(manifest_path(settings))["files"].values()}
    pattern = settings.file_source.pattern if settings.source == "file" else "tracks_*"
    source = dataclasses.replace(settings.file_source, pattern=pattern)
    index = file_source.index_landing(source, settings.dataset, settings.landing_dir, sources.index_dir(settings))
    new = []
    for file in index.files:
        if file.sha256 not in known:
            new.append(NewFile(file.path.name, file.sha256, dict(file.labeled_rows)))
            known.add(file.sha256)
    return new


def pending_rows(manifest: Mapping[str, Any]) -> dict[int, int]:
    """period -> labeled rows of the files not yet announced to training."""
    pending: dict[int, int] = {}
    for entry in manifest["files"].values():
        for period, rows in entry["labeled_rows"].items():
            if int(period) not in {int(p) for p in entry["announced"]}:
                pending[int(period)] = pending.get(int(period), 0) + int(rows)
    return dict(sorted(pending.items()))


def due_periods(pending: Mapping[int, int], policy: LivePolicy) -> list[int]:
    """The periods with at least ``policy.min_new_rows`` pending labeled rows, ascending."""
    return sorted(p for p, rows in pending.items() if rows >= policy.min_new_rows)


def collect_new_tracks(settings: Settings, period: int, credentials: Any = None) -> dict[str, Any]:
    """Land ``period`` from a pulling source, then record every new landing file in the manifest.

    The file source only watches its folder; the Spotify (and synthetic) sources first land
    ``period`` into theirs (once: a landed year is not fetched again). Returns the new file names,
    their labeled rows and the pending rows per period (as strings, for XCom).
    """
    if settings.source != "file":
        sources.land_period(settings, period, credentials)
    new = scan_new_files(settings)
    path = manifest_path(settings)
    manifest = _load(path)
    for f in new:
        key = f.name if f.name not in manifest["files"] else f"{f.name}@{f.sha256[:12]}"
        manifest["files"][key] = {
            "sha256": f.sha256,
            "labeled_rows": {str(p): n for p, n in f.labeled_rows.items()},
            "announced": [],
        }
    _save(path, manifest)
    pending = pending_rows(manifest)
    logger.info("live: %d new files, pending labeled rows %s", len(new), pending)
    return {
        "new_files": [f.name for f in new],
        "new_rows": sum(sum(f.labeled_rows.values()) for f in new),
        "pending": {str(p): n for p, n in pending.items()},
    }


def announce(settings: Settings, periods: Iterable[int]) -> dict[str, Any]:
    """Mark ``periods``' pending rows as handed to training; return what was announced."""
    periods = sorted(set(int(p) for p in periods))
    path = manifest_path(settings)
    manifest = _load(path)
    rows = pending_rows(manifest)
    for entry in manifest["files"].values():
        entry["announced"] = sorted(
            {*map(int, entry["announced"]), *(p for p in periods if str(p) in entry["labeled_rows"])}
        )
    _save(path, manifest)
    return {"periods": periods, "rows": {str(p): rows.get(p, 0) for p in periods}}


def retrain_conf(settings: Settings, period: int) -> dict[str, Any]:
    """The yearly DAG's Params for retraining on ``period`` from the live landing folder."""
    conf: dict[str, Any] = {"year": int(period), "source": settings.source}
    if settings.source == "file":
        conf["landing_dir"] = str(settings.landing_dir)
    return conf
