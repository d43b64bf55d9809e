"""Scenarios as data: presets, shapes over the years, and strict JSON files whose errors name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from driftwheel.config import Settings, SettingsError, SyntheticConfig
from driftwheel.scenarios import KINDS, PRESETS, SHAPES, Scenario, ScenarioError, Shift, load_scenario


def test_every_kind_and_shape_has_a_preset_besides_stable_and_the_default() -> None:
    # new_artists_incremental would be new_artists_gradual again: a track's artist is new or not.
    expected = {f"{kind}_{shape}" for kind in KINDS for shape in SHAPES} - {"new_artists_incremental"}
    expected |= {"stable", "spotify_like"}
    assert set(PRESETS) == expected
    assert PRESETS["spotify_like"].baseline == "spotify_like" and not PRESETS["spotify_like"].shifts
    assert PRESETS["stable"].baseline == "stable" and not PRESETS["stable"].shifts
    for name, scenario in PRESETS.items():
        assert scenario.name == name
    assert SyntheticConfig().scenario == "spotify_like"


@pytest.mark.parametrize(
    ("shape", "years", "expected"),
    [
        ("sudden", 1, [0, 1, 1, 1, 1, 1]),
        ("gradual", 4, [0, 0.25, 0.5, 0.75, 1, 1]),
        ("incremental", 4, [0, 0.25, 0.5, 0.75, 1, 1]),
        ("recurring", 4, [0, 1, 1, 0, 0, 1]),
        ("recurring", 3, [0, 1, 1, 0, 1, 1]),
        ("blip", 2, [0, 1, 1, 0, 0, 0]),
    ],
)
def test_intensity_follows_the_shape_over_the_years(shape: str, years: int, expected: list[float]) -> None:
    shift = Shift.model_validate({"kind": "label", "shape": shape, "start": 2016, "years": years, "severity": 5.0})
    assert [shift.intensity(y) for y in range(2015, 2021)] == expected


def test_a_json_file_gives_the_same_scenario_as_the_preset(tmp_path: Path) -> None:
    path = tmp_path / "concept.json"
    path.write_text(PRESETS["concept_blip"].model_dump_json())
    assert load_scenario(str(path)) == PRESETS["concept_blip"]
    assert SyntheticConfig(scenario=str(path)).scenario == str(path)


def _written(tmp_path: Path, content: object) -> str:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(content))
    return str(path)


SHIFT = {"kind": "covariate", "shape": "sudden", "start": 2016, "severity": 1.0, "features": ["energy"]}


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ({"name": "x", "shifts": [SHIFT], "colour": "red"}, "colour"),
        ({"name": "x", "shifts": [{**SHIFT, "severity": "1.0"}]}, "shifts.0.severity"),  # strict: no coercion
        ({"name": "x", "shifts": [{**SHIFT, "kind": "seasonal"}]}, "shifts.0.kind"),
        ({"name": "x", "shifts": [{**SHIFT, "features": ["energy", "popularity"]}]}, "'popularity'"),
        ({"name": "x", "shifts": [{**SHIFT, "kind": "label"}]}, "a label shift takes no features"),
        ({"name": "x", "shifts": [{**SHIFT, "kind": "concept", "features": ["tempo"]}]}, "'tempo'"),
        ({"name": "x", "shifts": [{**SHIFT, "kind": "new_artists", "features": [], "severity": 2.0}]}, "severity"),
        ({"name": "x", "shifts": [{**SHIFT, "shape": "recurring", "years": 1}]}, "period"),
        (
            {"name": "x", "shifts": [{**SHIFT, "kind": "new_artists", "features": [], "shape": "incremental"}]},
            "cannot be incremental",
        ),
        ({"shifts": []}, "name"),
    ],
)
def test_an_invalid_file_is_refused_naming_the_key(tmp_path: Path, content: object, named: str) -> None:
    with pytest.raises(ScenarioError, match="invalid scenario file") as err:
        load_scenario(_written(tmp_path, content))
    assert named in str(err.value)


def test_an_unknown_name_lists_the_presets() -> None:
    with pytest.raises(ScenarioError) as err:
        load_scenario("concept_sudenn")
    assert "concept_sudden" in str(err.value) and "spotify_like" in str(err.value)


def test_flywheel_scenario_is_validated_naming_the_variable_and_the_presets(tmp_path: Path) -> None:
    assert Settings.from_env({"FLYWHEEL_STATE_DIR": str(tmp_path)}).synthetic.scenario == "spotify_like"
    chosen = Settings.from_env({"FLYWHEEL_STATE_DIR": str(tmp_path), "FLYWHEEL_SCENARIO": "label_blip"})
    assert chosen.synthetic.scenario == "label_blip"
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"FLYWHEEL_STATE_DIR": str(tmp_path), "FLYWHEEL_SCENARIO": "drifty"})
    assert "FLYWHEEL_SCENARIO='drifty'" in str(err.value)
    assert "stable" in str(err.value) and "new_artists_gradual" in str(err.value)
    bad = _written(tmp_path, {"name": "x", "shifts": [{**SHIFT, "start": "2016"}]})
    with pytest.raises(SettingsError, match=r"FLYWHEEL_SCENARIO=.*shifts\.0\.start"):
        Settings.from_env({"FLYWHEEL_STATE_DIR": str(tmp_path), "FLYWHEEL_SCENARIO": bad})


def test_scenarios_are_frozen() -> None:
    with pytest.raises(ValueError):
        PRESETS["stable"].name = "other"  # type: ignore[misc]
    assert isinstance(PRESETS["stable"], Scenario)


def test_the_dag_offers_the_preset_names_in_their_order() -> None:
    # The DAG's scenario Param reads the names from the light config module, not the models.
    from driftwheel.config import SCENARIO_PRESETS
    from driftwheel.scenarios import PRESETS

    assert SCENARIO_PRESETS == tuple(PRESETS)
