from pathlib import Path

import pandas as pd
import pytest

from tracks import make_tracks
from driftwheel import store


def test_partition_is_overwritten_on_rerun(tmp_path: Path) -> None:
    store.write_partition(tmp_path, 2015, make_tracks(2015, n=10))
    path = store.write_partition(tmp_path, 2015, make_tracks(2015, n=7))
    assert path == tmp_path / "year=2015" / "tracks.parquet"
    assert len(store.read_partition(tmp_path, 2015)) == 7
    assert [p.name for p in path.parent.iterdir()] == ["tracks.parquet"]  # no temporary left behind


def test_read_partitions_in_period_order(tmp_path: Path) -> None:
    for year in (2012, 2010, 2011):
        store.write_partition(tmp_path, year, make_tracks(year, n=3))
    assert store.available_periods(tmp_path) == [2010, 2011, 2012]
    assert list(store.read_partitions(tmp_path, [2012, 2010])["year"].unique()) == [2010, 2012]


def test_empty_quarantine_removes_old_file(tmp_path: Path) -> None:
    frame = make_tracks(2015, n=3)
    assert store.write_quarantine(tmp_path, 2015, frame) is not None
    assert store.write_quarantine(tmp_path, 2015, frame.iloc[:0]) is None
    assert not (tmp_path / "year=2015" / "rejected_rows.csv").exists()


def test_write_atomic_replaces_a_file_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "reports" / "summary.json"
    assert store.write_text(path, '{"rows": 1}') == path  # creates the folder
    store.write_text(path, '{"rows": 2}')
    assert path.read_text() == '{"rows": 2}'

    def fails_halfway(tmp: Path) -> None:
        tmp.write_text('{"rows": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.write_atomic(path, fails_halfway)
    assert path.read_text() == '{"rows": 2}'  # the old content, never half a file
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temporary left behind


def test_write_frame_writes_csv_or_parquet_by_suffix(tmp_path: Path) -> None:
    frame = make_tracks(2015, n=3)
    pd.testing.assert_frame_equal(pd.read_csv(store.write_frame(frame, tmp_path / "rows.csv")), frame)
    pd.testing.assert_frame_equal(pd.read_parquet(store.write_frame(frame, tmp_path / "rows.parquet")), frame)
