"""One promotion at a time per model, across processes, workers and machines.

A promotion reads the champion, checks it, then moves the alias: without a lock two promotions can
interleave and leave the worse model in production. :func:`promotion_lock` serialises them:

* ``postgresql...`` URI: a session-level advisory lock on that server (every Celery worker of a
  server stack reaches it; the embedded default's tasks already write to MLflow's database there);
* ``file://`` URI: an exclusive ``flock`` on a file in that folder (processes of one machine).

Both are released by the operating system or the server when the holder dies (kill -9 included),
so a crashed promotion never leaves the lock taken.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0


class LockTimeout(TimeoutError):
    """The promotion lock could not be taken in time (another promotion holds it)."""


def _key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name`` (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(f"driftwheel.promotion:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def promotion_lock(uri: str, name: str, timeout: float = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Hold the promotion lock of model ``name`` at ``uri`` for the duration of the block.

    Raises :class:`LockTimeout` after ``timeout`` seconds of waiting.
    """
    t0 = time.monotonic()
    if uri.startswith("postgresql"):
        manager = _advisory_lock(uri, name, timeout)
    elif uri.startswith("file:"):
        manager = _file_lock(Path(unquote(urlparse(uri).path)) / f"{_safe(name)}.lock", timeout)
    else:
        raise ValueError(f"promotion lock URI must be postgresql://... or file://..., not {uri!r}")
    with manager:
        waited = time.monotonic() - t0
        if waited > 1:
            logger.info("waited %.1f s for the promotion lock of %s", waited, name)
        yield


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


@contextmanager
def _advisory_lock(uri: str, name: str, timeout: float) -> Iterator[None]:
    import psycopg2

    scheme, sep, rest = uri.partition("://")
    conn = psycopg2.connect(f"{scheme.split('+')[0]}{sep}{rest}")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            # lock_timeout bounds the wait of pg_advisory_lock like that of any other lock.
            cur.execute("SET lock_timeout = %s", (f"{int(timeout * 1000)}ms",))
            try:
                cur.execute("SELECT pg_advisory_lock(%s)", (_key(name),))
            except psycopg2.errors.LockNotAvailable as err:
                raise LockTimeout(
                    f"the promotion lock of {name} is held elsewhere for more than {timeout:.0f} s"
                ) from err
        try:
            yield
        finally:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_key(name),))
    finally:
        conn.close()  # ends the session: the server drops any lock it still held


@contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with path.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise LockTimeout(f"{path} is locked by another promotion for more than {timeout:.0f} s") from err
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
