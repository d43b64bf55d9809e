from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import psycopg2
import pytest

# The machine's PostgreSQL server (trust auth). Every database a test makes carries this session's
# suffix, so two test sessions on one server (a developer's and CI's) never drop each other's.
PG_SERVER = os.environ.get("FLYWHEEL_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
DB_SUFFIX = os.environ.get("FLYWHEEL_TEST_DB_SUFFIX", str(os.getpid()))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end test that starts real Airflow processes (slow, minutes)")


def _execute(statement: str) -> None:
    conn = psycopg2.connect(PG_SERVER.replace("+psycopg2", "") + "/postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def fresh_database() -> Iterator[Callable[[str], str]]:
    """Make an empty database on the test server; it is dropped when the module's tests end."""
    made: list[str] = []

    def make(name: str) -> str:
        full = f"{name}_{DB_SUFFIX}"
        _execute(f'DROP DATABASE IF EXISTS "{full}" WITH (FORCE)')
        _execute(f'CREATE DATABASE "{full}"')
        made.append(full)
        return f"{PG_SERVER}/{full}"

    yield make
    for full in made:
        _execute(f'DROP DATABASE IF EXISTS "{full}" WITH (FORCE)')
