"""The file source on the files users really have: each file read on its own, refused by name."""

from pathlib import Path

import pytest

from badfiles import (
    UNREADABLE,
    digests,
    write_bom_csv,
    write_csv,
    write_header_only_csv,
    write_latin1_csv,
    write_non_data_file,
    write_semicolon_csv,
)
from tracks import make_tracks
from driftwheel.config import ColumnMapError, DataError, DatasetSpec, FileSourceConfig
from driftwheel.sources.file import SOURCE_FILE, SOURCE_ROW, UnreadableFile, available_periods, read_period

SPEC = DatasetSpec()


def _landing(tmp_path: Path) -> Path:
    """A landing folder with two good files, 2015 and 2016."""
    folder = tmp_path / "landing"
    folder.mkdir()
    write_csv(folder, make_tracks(2015, n=20), "tracks_2015.csv")
    write_csv(folder, make_tracks(2016, n=20), "tracks_2016.csv")
    return folder


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_an_unreadable_file_is_one_error_naming_file_reason_and_fix(tmp_path: Path, kind: str) -> None:
    folder = _landing(tmp_path)
    writer, fix = UNREADABLE[kind]
    bad = writer(folder, make_tracks(2017, n=20))
    before = digests(folder)
    for year in (2015, 2016):  # its years cannot be known: it blocks every year, and says so
        with pytest.raises(UnreadableFile) as err:
            read_period(FileSourceConfig(), SPEC, folder, year)
        message = str(err.value)
        assert message.startswith(f"{bad.name}: ") and message.count("\n") == 0
        assert fix in message and "blocks every year" in message
    assert isinstance(err.value, DataError)  # deterministic: the DAG fails it without retry
    assert digests(folder) == before


def test_every_unreadable_file_is_named_in_the_one_error(tmp_path: Path) -> None:
    folder = _landing(tmp_path)
    for writer, _ in UNREADABLE.values():
        writer(folder, make_tracks(2017, n=20))
    with pytest.raises(UnreadableFile) as err:
        available_periods(FileSourceConfig(), SPEC, folder)
    lines = str(err.value).splitlines()
    assert sorted(line.split(":")[0] for line in lines) == sorted(
        ["empty.csv", "latin1.csv", "random.parquet", "semicolon.csv", "truncated.parquet"]
    )


def test_encoding_and_delimiter_options_read_those_files(tmp_path: Path) -> None:
    folder = tmp_path / "landing"
    folder.mkdir()
    write_latin1_csv(folder, make_tracks(2015, n=20), "latin1.csv")
    batch = read_period(FileSourceConfig(encoding="latin-1"), SPEC, folder, 2015)
    assert batch.frame["artist_name"].iloc[0] == "Beyoncé" and len(batch.frame) == 20

    other = tmp_path / "semicolons"
    other.mkdir()
    frame = make_tracks(2015, n=20)
    write_semicolon_csv(other, frame)  # semicolons and decimal commas
    batch = read_period(FileSourceConfig(delimiter=";", decimal=","), SPEC, other, 2015)
    assert batch.frame["energy"].tolist() == pytest.approx(frame["energy"].tolist())


def test_bom_header_only_and_non_data_files_are_read_or_ignored(tmp_path: Path) -> None:
    folder = tmp_path / "landing"
    folder.mkdir()
    write_bom_csv(folder, make_tracks(2015, n=20), "bom.csv")
    write_header_only_csv(folder, make_tracks(2015, n=20))
    write_non_data_file(folder, make_tracks(2015, n=20))
    batch = read_period(FileSourceConfig(), SPEC, folder, 2015)
    assert "year" in batch.frame.columns and len(batch.frame) == 20
    assert [p.name for p in batch.files] == ["bom.csv"]


def test_source_row_is_the_files_line_number(tmp_path: Path) -> None:
    folder = tmp_path / "landing"
    folder.mkdir()
    path = write_csv(folder, make_tracks(2015, n=3), "tracks.csv")
    # A blank line in the middle must not shift the numbers of the lines after it.
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], "", *lines[2:]]) + "\n")
    make_tracks(2015, n=3).to_parquet(folder / "tracks.parquet", index=False)
    frame = read_period(FileSourceConfig(), SPEC, folder, 2015).frame
    csv_rows = frame[frame[SOURCE_FILE] == "tracks.csv"]
    assert csv_rows[SOURCE_ROW].tolist() == [2, 4, 5]  # the header is line 1
    assert csv_rows["track_id"].tolist() == [line.split(",")[1] for line in lines[1:]]
    assert frame.loc[frame[SOURCE_FILE] == "tracks.parquet", SOURCE_ROW].tolist() == [1, 2, 3]


def test_a_rename_of_a_column_no_file_has_names_the_map_file_and_key(tmp_path: Path) -> None:
    folder = _landing(tmp_path)
    source = FileSourceConfig(
        column_map={"track_popularity": "popularity"}, column_map_file=tmp_path / "my_columns.json"
    )
    with pytest.raises(ColumnMapError, match=r"my_columns.json: key 'columns.track_popularity': no landing file"):
        read_period(source, SPEC, folder, 2015)


def test_a_file_without_period_column_is_refused_by_name(tmp_path: Path) -> None:
    folder = _landing(tmp_path)
    write_csv(folder, make_tracks(2015, n=5).drop(columns="year"), "no_year.csv")
    with pytest.raises(UnreadableFile, match=r"no_year.csv: no column 'year'.*\"date_column\""):
        read_period(FileSourceConfig(), SPEC, folder, 2015)

