"""docs/column-map.md documents every key of the column map, with an example the loader accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from driftwheel.config import ColumnMapFile, ScaleRule, load_column_map

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "column-map.md"


def _sections() -> dict[str, str]:
    """The text under each ``## `key` `` heading, by key."""
    parts = re.split(r"^## `([a-z_]+)`\s*$", DOC.read_text(encoding="utf-8"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def _examples(text: str) -> list[str]:
    return re.findall(r"```json\n(.*?)```", text, flags=re.S)


def test_every_key_of_the_column_map_has_a_section() -> None:
    assert sorted(_sections()) == sorted(ColumnMapFile.model_fields)


@pytest.mark.parametrize("key", sorted(ColumnMapFile.model_fields))
def test_each_keys_examples_set_that_key_through_the_loader(key: str, tmp_path: Path) -> None:
    examples = _examples(_sections().get(key, ""))
    assert examples, f"no JSON example under ## `{key}`"
    for example in examples:
        path = tmp_path / "map.json"
        path.write_text(example, encoding="utf-8")
        assert f'"{key}"' in example
        load_column_map(path)  # raises ColumnMapError naming the key if the example is wrong


def test_the_full_example_loads_and_the_readme_links_the_reference(tmp_path: Path) -> None:
    first = _examples(DOC.read_text(encoding="utf-8"))[0]
    path = tmp_path / "map.json"
    path.write_text(first, encoding="utf-8")
    loaded = load_column_map(path)
    # The first example uses every key.
    assert set(json.loads(first)) == set(ColumnMapFile.model_fields)
    assert set(loaded) - {"column_map_file"} == {
        "column_map", "date_column", "pattern", "encoding", "delimiter", "decimal", "features", "optional_features",
        "scale", "ranges", "id_from", "target_range",
    }  # fmt: skip
    # The names the model reads for artist, title and album are the renames' targets.
    assert {"artist_name", "song_name", "album_name"} <= set(loaded["column_map"].values())
    assert "(docs/column-map.md)" in (REPO / "README.md").read_text(encoding="utf-8")


def test_both_forms_of_a_scale_are_documented_and_mean_what_the_doc_says(tmp_path: Path) -> None:
    section = _sections()["scale"]
    for name, info in ScaleRule.model_fields.items():
        assert f"`{info.alias or name}`" in section or f'"{info.alias or name}"' in section, name
    path = tmp_path / "map.json"
    path.write_text(_examples(section)[0], encoding="utf-8")
    scale = load_column_map(path)["scale"]
    assert scale == {"energy": (0.01, 0.0), "duration_ms": (1000.0, 0.0)}  # value * factor + offset
