"""The file source on the files users really have: each file read on its own, refused by name,
and parsed once through the landing index however many years it holds."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

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
from driftwheel import sources
from driftwheel.config import ColumnMapError, DataError, DatasetSpec, FileSourceConfig, Settings
from driftwheel.sources import file as file_source
from driftwheel.sources.file import (
    SOURCE_FILE,
    SOURCE_ROW,
    LandingError,
    UnreadableFile,
    available_periods,
    index_landing,
    read_period,
)

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


# -- the landing index -------------------------------------------------------------------------------
YEARS = range(2008, 2021)


def _parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the landing files the file source parses from now on, one entry per parse."""
    parsed: list[str] = []
    parse = file_source._read

    def counting(path: Path, source: FileSourceConfig = FileSourceConfig()) -> pd.DataFrame:
        parsed.append(path.name)
        return parse(path, source)

    monkeypatch.setattr(file_source, "_read", counting)
    return parsed


def _all_years(folder: Path, n: int = 10, seed: int = 0) -> Path:
    """One landing CSV holding every year of :data:`YEARS`, as an export of a whole table does."""
    folder.mkdir(exist_ok=True)
    frame = pd.concat([make_tracks(y, n=n, seed=seed) for y in YEARS], ignore_index=True)
    return write_csv(folder, frame.sample(frac=1.0, random_state=0), "all_years.csv")  # years interleaved


def test_a_file_holding_every_year_is_parsed_once_across_the_years(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _all_years(tmp_path / "landing")
    expected = {y: read_period(FileSourceConfig(), SPEC, path.parent, y).frame for y in YEARS}  # no index
    before = digests(path.parent)
    settings = Settings(
        state_dir=tmp_path / "state", source="file", file_source=FileSourceConfig(landing_dir=path.parent)
    )
    parsed = _parsed(monkeypatch)
    for year in YEARS:  # what ingest_tracks and validate_tracks read, each a task of its own
        assert sources.land_period(settings, year).files == (path,)
        batch = sources.read_period(settings, year)
        assert_frame_equal(batch.frame, expected[year])  # the same rows, lines and types as a parse
    assert parsed == ["all_years.csv"]
    assert digests(path.parent) == before  # landing files are only read


def test_a_rewritten_file_is_indexed_again_and_its_old_rows_are_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _all_years(tmp_path / "landing")
    state = tmp_path / "state"
    assert len(read_period(FileSourceConfig(), SPEC, path.parent, 2015, state).frame) == 10
    parsed = _parsed(monkeypatch)
    _all_years(path.parent, n=4, seed=1)  # same name, new content
    batch = read_period(FileSourceConfig(), SPEC, path.parent, 2015, state)
    assert len(batch.frame) == 4 and batch.frame["track_id"].str.startswith("t2015_1_").all()
    assert available_periods(FileSourceConfig(), SPEC, path.parent, state) == list(YEARS)
    assert parsed == ["all_years.csv"]
    kept = [p for p in state.rglob("*.parquet")]
    assert len(kept) == len(YEARS)  # one slice per year of the new content; the old ones are gone


def test_a_renamed_copy_is_not_parsed_again_and_both_files_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _all_years(tmp_path / "landing")
    state = tmp_path / "state"
    read_period(FileSourceConfig(), SPEC, path.parent, 2015, state)
    parsed = _parsed(monkeypatch)
    shutil.copy(path, path.parent / "copy.csv")
    batch = read_period(FileSourceConfig(), SPEC, path.parent, 2015, state)
    assert parsed == []
    assert [p.name for p in batch.files] == ["all_years.csv", "copy.csv"]
    rows = {name: group[SOURCE_ROW].tolist() for name, group in batch.frame.groupby(SOURCE_FILE)}
    assert rows["copy.csv"] == rows["all_years.csv"] and len(rows["copy.csv"]) == 10  # same lines, two names


def test_a_bad_file_dropped_next_to_indexed_ones_blocks_every_year_until_it_is_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _landing(tmp_path)
    state = tmp_path / "state"
    assert available_periods(FileSourceConfig(), SPEC, folder, state) == [2015, 2016]
    parsed = _parsed(monkeypatch)
    bad = write_latin1_csv(folder, make_tracks(2017, n=5))
    for year in (2015, 2016):
        with pytest.raises(UnreadableFile, match=r"^latin1.csv: is not utf-8 text .*blocks every year"):
            read_period(FileSourceConfig(), SPEC, folder, year, state)
    bad.unlink()
    assert len(read_period(FileSourceConfig(), SPEC, folder, 2016, state).frame) == 20
    assert parsed == ["latin1.csv", "latin1.csv"]  # the good files were not parsed again
    with pytest.raises(LandingError, match=r"no rows for year=2017"):
        read_period(FileSourceConfig(), SPEC, folder, 2017, state)


def _awkward_csv(folder: Path) -> FileSourceConfig:
    """Blank lines, empty text cells, a text column of booleans, a number column with text in it."""
    frame = pd.concat([make_tracks(2015, n=6), make_tracks(2016, n=6)], ignore_index=True)
    frame.loc[[0, 7], "album_name"] = np.nan
    frame["explicit"] = [True, False, np.nan, True, True, False] * 2
    frame["label"] = ["x"] * 11 + [np.nan]
    frame["energy"] = frame["energy"].astype(object)
    frame.loc[9, "energy"] = "n/a"  # only in 2016: 2015's energy is still text, as the parser read it
    path = write_csv(folder, frame, "awkward.csv")
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:3], "", *lines[3:], ""]) + "\n")
    return FileSourceConfig()


def _european_csv(folder: Path) -> FileSourceConfig:
    """Latin-1, semicolons and decimal commas in one file."""
    frame = pd.concat([make_tracks(2015, n=6), make_tracks(2016, n=6)], ignore_index=True)
    frame.loc[[0, 11], "artist_name"] = ["Beyoncé", "Sigur Rós"]
    frame.to_csv(folder / "export.csv", index=False, sep=";", decimal=",", encoding="latin-1")
    return FileSourceConfig(encoding="latin-1", delimiter=";", decimal=",")


def _parquet_and_dates(folder: Path) -> FileSourceConfig:
    frame = pd.concat([make_tracks(2015, n=6), make_tracks(2016, n=6)], ignore_index=True)
    frame["release_date"] = [f"{y}-03-0{i % 9 + 1}" for i, y in enumerate(frame.pop("year"))]
    frame["popularity"] = frame["popularity"].astype("Int64")
    frame.loc[3, "popularity"] = pd.NA
    frame.to_parquet(folder / "tracks.parquet", index=False)
    write_csv(folder, frame.rename(columns={"popularity": "pop"}), "tracks.csv")
    return FileSourceConfig(date_column="release_date", column_map={"pop": "popularity"})


@pytest.mark.parametrize("write", [_awkward_csv, _european_csv, _parquet_and_dates])
def test_rows_read_back_from_the_index_are_the_rows_a_parse_gives(tmp_path: Path, write: object) -> None:
    folder = tmp_path / "landing"
    folder.mkdir()
    source = write(folder)  # type: ignore[operator]
    for year in (2015, 2016):
        parsed = read_period(source, SPEC, folder, year)  # no index
        first = read_period(source, SPEC, folder, year, tmp_path / "state")  # indexes: parses the files
        again = index_landing(source, SPEC, folder, tmp_path / "state").read_period(year)  # from the index
        assert_frame_equal(first.frame, parsed.frame)
        assert_frame_equal(again.frame, parsed.frame)
        # assert_frame_equal takes None for NaN, but they differ downstream (as text: 'None', 'nan').
        assert again.frame.map(type).equals(parsed.frame.map(type))
        assert again.files == parsed.files


def test_a_damaged_index_is_rebuilt_from_the_landing_files(tmp_path: Path) -> None:
    folder = _landing(tmp_path)
    state = tmp_path / "state"
    expected = read_period(FileSourceConfig(), SPEC, folder, 2016, state).frame
    for index in state.rglob("index.json"):
        index.write_text("{not json")
    for slice_ in state.rglob("2016.parquet"):
        slice_.unlink()
    assert_frame_equal(read_period(FileSourceConfig(), SPEC, folder, 2016, state).frame, expected)
