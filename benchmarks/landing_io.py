"""How long ingesting and validating every year takes when one landing file holds all the years.

Writes one CSV of ``--years`` synthetic years (``--rows-per-year`` rows each) into a fresh landing folder, then
runs, for each year in order, what the DAG's first two tasks run: ``steps.ingest_tracks`` and
``steps.validate_tracks`` (file source). Prints the seconds per year, the total, and how many
times a landing file was parsed. The timings are for a report, not a test: they depend on the
machine and its load.

    .venv/bin/python benchmarks/landing_io.py --out /tmp/landing-io
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from driftwheel import steps
from driftwheel.config import FileSourceConfig, Settings, SyntheticConfig
from driftwheel.sources import file as file_source
from driftwheel.sources.synthetic import generate_year


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (emptied first)")
    parser.add_argument("--first-year", type=int, default=2008)
    parser.add_argument("--years", type=int, default=13)
    parser.add_argument("--rows-per-year", type=int, default=SyntheticConfig().rows_per_year)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    shutil.rmtree(args.out, ignore_errors=True)
    landing = args.out / "landing"
    landing.mkdir(parents=True)
    years = list(range(args.first_year, args.first_year + args.years))
    data = pd.concat([generate_year(y, SyntheticConfig(rows_per_year=args.rows_per_year)) for y in years])
    data.to_csv(landing / "tracks_all_years.csv", index=False)
    settings = Settings(state_dir=args.out / "state", source="file", file_source=FileSourceConfig(landing_dir=landing))

    parses = 0
    read = file_source._read

    def counting_read(*a: object, **k: object) -> pd.DataFrame:
        nonlocal parses
        parses += 1
        return read(*a, **k)  # type: ignore[arg-type]

    file_source._read = counting_read  # type: ignore[assignment]
    seconds = []
    for year in years:
        start = time.perf_counter()
        steps.ingest_tracks(settings, year)
        steps.validate_tracks(settings, year)
        seconds.append(time.perf_counter() - start)
        print(f"{year}: ingest + validate {seconds[-1]:.2f} s", flush=True)
    # The first year also creates MLflow's tracking database (validation asks it for a champion).
    print(
        f"{len(years)} years from one {len(data)}-row file: {sum(seconds):.1f} s "
        f"({sum(seconds[1:]):.1f} s after the first year); the file was parsed {parses} times"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
