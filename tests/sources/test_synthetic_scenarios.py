"""The synthetic source under drift scenarios: the default is unchanged to the byte, and each
preset's data has the property its kind declares."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from driftwheel.config import SPOTIFY_AUDIO_FEATURES, DriftPolicy, SyntheticConfig
from driftwheel.drift import drift_report
from driftwheel.scenarios import CONCEPT_FEATURES, COVARIATE_FEATURES, PRESETS, Scenario
from driftwheel.sources import synthetic
from driftwheel.sources.synthetic import generate_year

CONFIG = SyntheticConfig()  # 2000 rows: enough for stable regressions and Evidently's Wasserstein test
BEFORE, AFTER = 2015, 2016  # every preset changes in 2016


def _digest(frame: pd.DataFrame) -> str:
    h = hashlib.sha256(repr(list(zip(frame.columns, map(str, frame.dtypes), strict=True))).encode())
    h.update(frame.to_csv(index=False).encode())
    return h.hexdigest()


# Computed with the code as it was before scenarios existed (commit 6f2552c): the demo's table and
# the benchmark's RMSEs rest on these exact bytes.
DEFAULT_DIGESTS = {
    (2008, 2000, 7): "2c145ff27d5fea2d46f317107737d5b1598a00d96fca4a476e5301803c5c09dd",
    (2015, 2000, 7): "50c9c97f2881ca0be8d98a84c01341720b145882fbaeadd1916d56541e446071",
    (2018, 2000, 7): "369693873258e20958041233fb055f8f9f5aa635a68025686aa17e578108f143",
    (2020, 2000, 7): "36887c8be5af14b5fe197f035a3a916d469180ee9bc22b4ef179bd56b56db458",
    (2031, 2000, 7): "c79ace129824fe6ff28cab1cf377c43d83914dd50ca1de64fd1f636f61fc08e9",
    (2012, 300, 3): "95edf1a3c6a665de590c5640668a1df765c27cc9b3b7d7324a58b5e7a6fb8681",
}


@pytest.mark.parametrize(("year", "rows", "seed"), list(DEFAULT_DIGESTS))
def test_the_default_scenario_gives_the_same_bytes_as_before_scenarios(year: int, rows: int, seed: int) -> None:
    config = SyntheticConfig(rows_per_year=rows, seed=seed)
    assert _digest(generate_year(year, config)) == DEFAULT_DIGESTS[year, rows, seed]
    explicit = generate_year(year, config, PRESETS["spotify_like"])
    assert _digest(explicit) == DEFAULT_DIGESTS[year, rows, seed]


def test_the_scenario_tables_match_the_generator() -> None:
    assert tuple(synthetic._LOADINGS) == COVARIATE_FEATURES
    assert set(CONCEPT_FEATURES) <= set(COVARIATE_FEATURES)


@pytest.fixture(scope="module")
def frames() -> dict[tuple[str, int], pd.DataFrame]:
    """The presets used below, for the years before and after their change, generated once."""
    names = ("stable", "covariate_sudden", "label_sudden", "concept_sudden", "new_artists_sudden")
    return {(name, year): generate_year(year, CONFIG, PRESETS[name]) for name in names for year in (BEFORE, AFTER)}


def _normed_wasserstein(before: pd.Series, after: pd.Series) -> float:
    """Evidently's measure for large numerical columns: the distance in reference standard deviations."""
    return float(stats.wasserstein_distance(before, after) / before.std())


def _coefficients(frame: pd.DataFrame, scale: np.ndarray) -> np.ndarray:
    """Least-squares slopes of popularity on the label's five features, per ``scale`` (a fixed sd)."""
    x = np.column_stack([np.ones(len(frame)), frame[list(CONCEPT_FEATURES)].to_numpy()])
    slopes = np.linalg.lstsq(x, frame["popularity"].to_numpy(float), rcond=None)[0][1:]
    return slopes * scale


def _relation_change(frames: dict[tuple[str, int], pd.DataFrame], name: str) -> np.ndarray:
    before, after = frames[name, BEFORE], frames[name, AFTER]
    scale = before[list(CONCEPT_FEATURES)].std().to_numpy()
    return _coefficients(after, scale) - _coefficients(before, scale)


def test_presets_are_seeded_and_deterministic(frames: dict[tuple[str, int], pd.DataFrame]) -> None:
    for name in ("concept_sudden", "new_artists_sudden"):
        pd.testing.assert_frame_equal(generate_year(AFTER, CONFIG, PRESETS[name]), frames[name, AFTER])
    other_seed = generate_year(AFTER, SyntheticConfig(seed=8), PRESETS["new_artists_sudden"])
    assert not other_seed["artist_name"].equals(frames["new_artists_sudden", AFTER]["artist_name"])


def test_a_scenario_file_generates_what_its_preset_does(tmp_path: Path) -> None:
    path = tmp_path / "label.json"
    path.write_text(PRESETS["label_gradual"].model_dump_json())
    config = SyntheticConfig(rows_per_year=300, scenario=str(path))
    pd.testing.assert_frame_equal(generate_year(2018, config), generate_year(2018, config, PRESETS["label_gradual"]))


def test_before_the_change_every_preset_is_the_stable_data(frames: dict[tuple[str, int], pd.DataFrame]) -> None:
    for name in ("covariate_sudden", "label_sudden", "concept_sudden", "new_artists_sudden"):
        pd.testing.assert_frame_equal(frames[name, BEFORE], frames["stable", BEFORE])


def test_covariate_moves_the_named_features_and_not_the_relation(
    frames: dict[tuple[str, int], pd.DataFrame],
) -> None:
    before, after = frames["covariate_sudden", BEFORE], frames["covariate_sudden", AFTER]
    (shift,) = PRESETS["covariate_sudden"].shifts
    for feature in COVARIATE_FEATURES:
        distance = _normed_wasserstein(before[feature], after[feature])
        if feature in shift.features:
            assert distance > 0.5, feature
        else:
            assert distance < 0.1, feature
    # The relation stays within the year-to-year noise of the stable preset's slopes (about 0.4
    # points per sd), far from what a concept change does (next test: about 5).
    assert np.abs(_relation_change(frames, "covariate_sudden")).max() < 1.0
    assert np.abs(_relation_change(frames, "stable")).max() < 1.0
    assert abs(after["popularity"].mean() - before["popularity"].mean()) < 0.5


def test_concept_keeps_the_inputs_and_flips_the_named_relation(frames: dict[tuple[str, int], pd.DataFrame]) -> None:
    before, after = frames["concept_sudden", BEFORE], frames["concept_sudden", AFTER]
    pd.testing.assert_frame_equal(  # the very same inputs as the stable preset's 2016
        after.drop(columns="popularity"), frames["stable", AFTER].drop(columns="popularity")
    )
    for feature in COVARIATE_FEATURES:
        assert _normed_wasserstein(before[feature], after[feature]) < 0.1, feature
    change = dict(zip(CONCEPT_FEATURES, _relation_change(frames, "concept_sudden"), strict=True))
    assert change.pop("danceability") < -4.0  # from about +2.5 points per sd to about -2.7
    assert max(abs(c) for c in change.values()) < 1.0
    assert abs(after["popularity"].mean() - before["popularity"].mean()) < 0.5


def test_label_shift_moves_the_targets_level_and_nothing_else(frames: dict[tuple[str, int], pd.DataFrame]) -> None:
    before, after = frames["label_sudden", BEFORE], frames["label_sudden", AFTER]
    (shift,) = PRESETS["label_sudden"].shifts
    rise = after["popularity"].mean() - before["popularity"].mean()
    assert shift.severity - 0.5 < rise < shift.severity + 0.5
    pd.testing.assert_frame_equal(after.drop(columns="popularity"), frames["stable", AFTER].drop(columns="popularity"))
    assert np.abs(_relation_change(frames, "label_sudden")).max() < 1.0


def test_gradual_and_incremental_shifts_build_up_over_their_years() -> None:
    config = SyntheticConfig(rows_per_year=1000)
    for name in ("label_gradual", "label_incremental"):
        levels = [generate_year(y, config, PRESETS[name])["popularity"].mean() for y in range(2015, 2021)]
        rises = np.diff(levels)
        assert (rises[:4] > 0.8).all() and abs(rises[4]) < 0.8, (name, levels)
    # gradual: a share of the rows at the full severity, so the year's spread widens mid-way
    spreads = {
        name: generate_year(2017, config, PRESETS[name])["popularity"].std() for name in ("label_gradual", "stable")
    }
    assert spreads["label_gradual"] > spreads["stable"] + 0.5


def test_recurring_and_blip_shifts_revert() -> None:
    config = SyntheticConfig(rows_per_year=1000)
    stable = [generate_year(y, config, PRESETS["stable"])["popularity"].mean() for y in range(2015, 2021)]
    for name, on in (("label_blip", [0, 1, 1, 0, 0, 0]), ("label_recurring", [0, 1, 1, 0, 0, 1])):
        levels = [generate_year(y, config, PRESETS[name])["popularity"].mean() for y in range(2015, 2021)]
        lifted = [round((a - b) / PRESETS[name].shifts[0].severity) for a, b in zip(levels, stable, strict=True)]
        assert lifted == on, name


def _seen_share(frames: dict[tuple[str, int], pd.DataFrame], name: str) -> float:
    """Share of the 2016 tracks whose artist released a track in 2008-2015."""
    history = pd.concat([generate_year(y, CONFIG, PRESETS["stable"]) for y in range(2008, BEFORE)])
    seen = set(history["artist_name"]) | set(frames[name, BEFORE]["artist_name"])
    return float(frames[name, AFTER]["artist_name"].isin(seen).mean())


def test_new_artists_brings_artists_never_seen_before(frames: dict[tuple[str, int], pd.DataFrame]) -> None:
    (shift,) = PRESETS["new_artists_sudden"].shifts
    stable, shifted = _seen_share(frames, "stable"), _seen_share(frames, "new_artists_sudden")
    # the chosen rows are new whether or not their artist would have been a returning one
    assert abs(shifted - stable * (1.0 - shift.severity)) < 0.05
    assert stable > 0.6
    after = frames["new_artists_sudden", AFTER]
    pool = set(synthetic._artist_pool(CONFIG.seed).names)
    newcomers = after.loc[~after["artist_name"].isin(pool), "artist_name"]
    assert 0.4 < len(newcomers) / len(after) < 0.6
    assert newcomers.value_counts().max() < 30  # a roster of artists, not one new name for all
    for feature in COVARIATE_FEATURES:
        assert _normed_wasserstein(frames["stable", AFTER][feature], after[feature]) < 0.1, feature


def test_the_drift_test_flags_nothing_on_stable_data_and_the_declared_change_otherwise(tmp_path: Path) -> None:
    """Evidently, as the flywheel configures it, against the default warm-up's pooled years."""
    reference = pd.concat([generate_year(y, CONFIG, PRESETS["stable"]) for y in range(2008, 2015)])

    def report(name: str, year: int) -> tuple[set[str], bool]:
        current = generate_year(year, CONFIG, PRESETS[name])
        result = drift_report(
            current,
            reference,
            SPOTIFY_AUDIO_FEATURES,
            "popularity",
            tmp_path / f"{name}{year}",
            DriftPolicy(),
            period=year,
            reference_periods=list(range(2008, 2015)),
        )
        return {
            c for c, drifted in result.column_drifted.items() if drifted and c != "popularity"
        }, result.target_drifted

    assert report("stable", 2016) == (set(), False)
    assert report("stable", 2020) == (set(), False)
    (covariate,) = PRESETS["covariate_sudden"].shifts
    assert report("covariate_sudden", 2016) == (set(covariate.features), False)
    assert report("label_sudden", 2016) == (set(), True)


def test_a_scenario_object_need_not_be_a_preset() -> None:
    scenario = Scenario.model_validate(
        {
            "name": "both",
            "baseline": "spotify_like",
            "shifts": [
                {"kind": "concept", "shape": "sudden", "start": 2019, "severity": 0.5, "features": ["energy"]},
                {"kind": "new_artists", "shape": "blip", "start": 2019, "years": 1, "severity": 0.2},
            ],
        }
    )
    config = SyntheticConfig(rows_per_year=400)
    pd.testing.assert_frame_equal(generate_year(2018, config, scenario), generate_year(2018, config))
    assert not generate_year(2019, config, scenario).equals(generate_year(2019, config))


def test_a_landing_folder_is_never_shared_by_two_generators(tmp_path: Path) -> None:
    # Synthetic landing files are generated once and reused: another generator in the same folder
    # would silently replay the first one's data, so it is refused, naming the variable.
    from driftwheel.config import Settings
    from driftwheel.sources import GeneratorMismatch, land_period

    first = Settings(state_dir=tmp_path, synthetic=SyntheticConfig(rows_per_year=200))
    land_period(first, 2015)
    land_period(first, 2016)  # the same generator: fine
    bigger = Settings(state_dir=tmp_path, synthetic=SyntheticConfig(rows_per_year=300))
    with pytest.raises(GeneratorMismatch, match="FLYWHEEL_ROWS_PER_YEAR: 200 there, 300 now"):
        land_period(bigger, 2017)
    assert not (first.landing_dir / "tracks_2017.csv").exists()


def test_each_scenario_lands_in_a_folder_of_its_own(tmp_path: Path) -> None:
    # The DAG's scenario Param switches a running flywheel to another scenario: its years land
    # beside the default's, never reusing (or overwriting) the default's files.
    from driftwheel.config import Settings
    from driftwheel.sources import land_period

    first = Settings(state_dir=tmp_path, synthetic=SyntheticConfig(rows_per_year=200))
    land_period(first, 2017)
    default_bytes = (first.landing_dir / "tracks_2017.csv").read_bytes()
    other = first.with_params({"scenario": "label_sudden"})
    assert other.landing_dir == tmp_path / "landing" / "synthetic-label_sudden"
    land_period(other, 2017)
    assert (first.landing_dir / "tracks_2017.csv").read_bytes() == default_bytes
    landed = pd.read_csv(other.landing_dir / "tracks_2017.csv")["popularity"].to_numpy()
    assert (landed == generate_year(2017, other.synthetic)["popularity"].to_numpy()).all()
    assert json.loads((other.landing_dir / "_generator.json").read_text())["scenario"] == "label_sudden"
