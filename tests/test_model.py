import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from tracks import make_tracks
from driftwheel.config import SPOTIFY_AUDIO_FEATURES, StudyNetConfig, TrainingConfig
from driftwheel.evaluate import rmse
from driftwheel.model import PopularityNet, fine_tune, load, save, train_full

CONFIG = TrainingConfig(study_net=StudyNetConfig(epochs=20, fine_tune_epochs=20))


def test_network_shape_is_the_studys() -> None:
    net = PopularityNet(13)
    assert [(layer.in_features, layer.out_features) for layer in net.layers] == [
        (13, 32),
        (32, 32),
        (32, 32),
        (32, 50),
        (50, 1),
    ]


def test_full_training_learns_the_signal_and_is_deterministic() -> None:
    train, test = make_tracks(2010, n=600), make_tracks(2010, n=300, seed=1)
    first = train_full(train, SPOTIFY_AUDIO_FEATURES, "popularity", CONFIG)
    second = train_full(train, SPOTIFY_AUDIO_FEATURES, "popularity", CONFIG)
    predictions = first.predict(test)
    assert np.array_equal(predictions, second.predict(test))
    mean_only = rmse(test["popularity"], np.full(len(test), train["popularity"].mean()))
    assert rmse(test["popularity"], predictions) < 0.7 * mean_only


def test_scalers_come_from_training_data_only() -> None:
    train = make_tracks(2010, n=300)
    model = train_full(train, SPOTIFY_AUDIO_FEATURES, "popularity", CONFIG)
    assert model.preprocessing.target_mean == train["popularity"].mean()
    shifted = make_tracks(2011, n=300, level=80)
    # Predicting a new year must not refit anything on it.
    model.predict(shifted)
    assert model.preprocessing.target_mean == train["popularity"].mean()


def test_transfer_freezes_first_layers_and_follows_the_new_level() -> None:
    parent = train_full(make_tracks(2010, n=600, level=50), SPOTIFY_AUDIO_FEATURES, "popularity", CONFIG)
    new = make_tracks(2011, n=600, level=60)
    child = fine_tune(
        parent, new, "popularity", TrainingConfig(study_net=StudyNetConfig(freeze_layers=3, fine_tune_epochs=20))
    )
    for i, (a, b) in enumerate(zip(parent.net.layers, child.net.layers)):
        same = torch.equal(a.weight, b.weight)
        assert same == (i < 3), f"layer {i}"
    test = make_tracks(2011, n=300, level=60, seed=2)
    assert rmse(test["popularity"], child.predict(test)) < rmse(test["popularity"], parent.predict(test)) - 3


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    frame = make_tracks(2010, n=200)
    model = train_full(frame, SPOTIFY_AUDIO_FEATURES, "popularity", TrainingConfig(study_net=StudyNetConfig(epochs=2)))
    files = save(model, tmp_path)
    loaded = load(files)
    assert np.allclose(loaded.predict(frame), model.predict(frame))


# -- trend_residual --------------------------------------------------------------------------------
import pandas as pd  # noqa: E402

from driftwheel import model as model_module  # noqa: E402
from driftwheel.config import DatasetSpec, TrendResidualConfig  # noqa: E402
from driftwheel.model import (  # noqa: E402
    TrendResidualModel,
    feature_columns,
    fine_tune_trend_residual,
    train_trend_residual,
)

SMALL = TrainingConfig(
    trend_residual=TrendResidualConfig(ensemble_size=2, epochs=10, fine_tune_epochs=3, replay_buffer_rows=300)
)


def _artist_year(year: int, seed: int, n: int = 300) -> pd.DataFrame:
    """Popularity = a level rising 3 a year + a lasting artist effect (+-6) + two audio features."""
    frame = make_tracks(year, n=n, level=50 + 3 * (year - 2010), seed=seed)
    effect = (frame["artist_name"].str.extract(r"(\d+)")[0].astype(int) % 5 - 2) * 3
    return frame.assign(popularity=(frame["popularity"] + effect).clip(0, 100))


def _trained(years: tuple[int, ...] = (2010, 2011, 2012)) -> tuple[TrendResidualModel, pd.DataFrame]:
    past = pd.concat([_artist_year(y, seed=y) for y in years], ignore_index=True)
    return train_trend_residual(past, np.ones(len(past), dtype=bool), feature_columns(DatasetSpec(), past), SMALL), past


def test_trend_residual_follows_the_trend_and_learns_artists() -> None:
    model, past = _trained()
    test = _artist_year(2013, seed=77)
    level_only = model.level(test["year"])
    means = past.groupby("year")["popularity"].mean()
    # A level rising ~3 a year is extrapolated, not held at 2012's mean.
    assert level_only[0] == pytest.approx(means[2012] + (means[2012] - means[2010]) / 2, abs=0.5)
    assert rmse(test["popularity"], model.predict(test)) < 0.75 * rmse(test["popularity"], level_only)


def test_a_known_period_is_scored_at_its_own_level() -> None:
    model, past = _trained()
    # The gate scores the newest labelled period's held-out rows: its level is the fitted mean.
    assert model.level(pd.Series([2012]))[0] == pytest.approx(past.loc[past["year"] == 2012, "popularity"].mean())


def test_a_step_of_the_yearly_mean_is_not_extrapolated_as_a_slope() -> None:
    model, past = _trained()
    means = past.groupby("year")["popularity"].mean()
    # The level rises ~3 a year: far less than a residual sd a year, so the trend is a line.
    assert model.level_step == pytest.approx(model.residual_std)
    assert model.level(pd.Series([2013]))[0] == pytest.approx(means[2012] + (means[2012] - means[2010]) / 2, abs=0.5)
    # 2012's mean jumps by two residual sds: the level of 2013 restarts at it instead of
    # extrapolating the jump; with the rule off (step_sds 0) the line overshoots.
    jump = 2 * model.residual_std
    stepped = dataclasses.replace(
        model, history=dataclasses.replace(model.history, period_means=means.add(pd.Series({2012: jump}), fill_value=0))
    )
    assert stepped.level(pd.Series([2013]))[0] == pytest.approx(means[2012] + jump)
    off = dataclasses.replace(
        stepped,
        config=dataclasses.replace(model.config, features=dataclasses.replace(model.config.features, step_sds=0.0)),
    )
    assert off.level_step is None
    assert off.level(pd.Series([2013]))[0] > means[2012] + jump + 3


def test_fit_rows_alone_set_a_period_level() -> None:
    frame = _artist_year(2010, seed=1)
    fit = np.arange(len(frame)) % 5 != 0
    model = train_trend_residual(frame, fit, feature_columns(DatasetSpec(), frame), SMALL)
    assert model.history.period_means[2010] == pytest.approx(frame["popularity"][fit].mean())


def test_fine_tune_grows_the_vocabulary_keeps_scalers_and_moves_every_layer() -> None:
    parent, _ = _trained()
    new = _artist_year(2013, seed=13).assign(artist_name=lambda f: f["artist_name"].where(f.index % 3 > 0, "Newcomer"))
    child = fine_tune_trend_residual(parent, new, np.ones(len(new), dtype=bool), SMALL)
    artists = set(child.history.table.loc[child.history.table["table"] == "artist", "key"])
    assert (
        "Newcomer" in artists
        and set(parent.history.table.loc[parent.history.table["table"] == "artist", "key"]) < artists
    )
    assert child.history.periods == [2010, 2011, 2012, 2013]
    np.testing.assert_array_equal(child.feature_mean, parent.feature_mean)
    for a, b in zip(parent.nets[0].layers, child.nets[0].layers):
        assert not torch.equal(a.weight, b.weight)  # nothing frozen
    assert len(child.replay) <= 300 and set(child.replay["period"]) <= {2010, 2011, 2012, 2013}
    assert child.train_seconds < 5


def test_trend_residual_works_without_text_columns() -> None:
    past = pd.concat([_artist_year(y, seed=y) for y in (2010, 2011)], ignore_index=True)
    bare = past.drop(columns=["artist_name", "song_name", "album_name"])
    columns = feature_columns(DatasetSpec(), bare)
    assert columns.artist is None and columns.title is None and columns.album is None
    model = train_trend_residual(bare, np.ones(len(bare), dtype=bool), columns, SMALL)
    assert model.features == tuple(SPOTIFY_AUDIO_FEATURES)
    assert np.isfinite(model.predict(_artist_year(2012, seed=3).drop(columns=["artist_name"]))).all()


def test_trend_residual_save_and_load_round_trip(tmp_path: Path) -> None:
    model, _ = _trained((2010, 2011))
    loaded = load(save(model, tmp_path))
    test = _artist_year(2012, seed=5)
    assert isinstance(loaded, TrendResidualModel)
    np.testing.assert_allclose(loaded.predict(test), model.predict(test), rtol=0, atol=1e-9)
    pd.testing.assert_frame_equal(loaded.replay, model.replay)


def test_a_model_saved_before_the_feature_knobs_had_their_own_section_still_loads(tmp_path: Path) -> None:
    import json

    model, _ = _trained((2010, 2011))
    files = save(model, tmp_path)
    saved = json.loads(files["preprocessing"].read_text())
    # The old format: the three knobs of that time at the top level, no later ones (step_sds).
    old_knobs = {k: saved["config"]["features"][k] for k in ("shrinkage", "decay", "trend_window")}
    flat = {k: v for k, v in saved["config"].items() if k != "features"} | old_knobs
    files["preprocessing"].write_text(json.dumps({**saved, "config": flat}))
    loaded = load(files)
    assert isinstance(loaded, TrendResidualModel) and loaded.config == model.config
    test = _artist_year(2012, seed=5)
    np.testing.assert_allclose(loaded.predict(test), model.predict(test), rtol=0, atol=1e-9)


def test_a_fine_tune_keeps_its_parents_network_shape_in_its_config(tmp_path: Path) -> None:
    parent, _ = _trained((2010, 2011))
    wider = TrainingConfig(trend_residual=TrendResidualConfig(ensemble_size=3, hidden=(16,), fine_tune_epochs=1))
    new = _artist_year(2012, seed=12)
    child = fine_tune_trend_residual(parent, new, np.ones(len(new), dtype=bool), wider)
    assert (child.config.ensemble_size, child.config.hidden) == (parent.config.ensemble_size, parent.config.hidden)
    assert isinstance(load(save(child, tmp_path)), TrendResidualModel)  # the saved shape matches the weights


# -- bounded training and batched scoring ------------------------------------------------------------
def _with_cap(cap: int) -> TrainingConfig:
    return dataclasses.replace(SMALL, trend_residual=dataclasses.replace(SMALL.trend_residual, max_fit_rows=cap))


def test_a_cap_above_the_rows_changes_nothing() -> None:
    past = pd.concat([_artist_year(y, seed=y) for y in (2010, 2011, 2012)], ignore_index=True)
    fit, columns = np.ones(len(past), dtype=bool), feature_columns(DatasetSpec(), past)
    assert TrendResidualConfig().max_fit_rows >= 14_000  # the seed data's largest training: never capped
    default = train_trend_residual(past, fit, columns, SMALL)
    at_size = train_trend_residual(past, fit, columns, _with_cap(len(past)))
    for a, b in zip(default.nets[0].parameters(), at_size.nets[0].parameters()):
        assert torch.equal(a, b)


def test_a_capped_training_fits_a_sample_chosen_by_content_and_keeps_every_label() -> None:
    past = pd.concat([_artist_year(y, seed=y) for y in (2010, 2011, 2012)], ignore_index=True)
    fit, columns = np.ones(len(past), dtype=bool), feature_columns(DatasetSpec(), past)
    capped = train_trend_residual(past, fit, columns, _with_cap(200))
    uncapped = train_trend_residual(past, fit, columns, SMALL)
    assert not torch.equal(capped.nets[0].layers[0].weight, uncapped.nets[0].layers[0].weight)
    # The sample depends on what the rows hold, not on their order: shuffled input, same model.
    shuffled = past.sample(frac=1.0, random_state=5).reset_index(drop=True)
    again = train_trend_residual(shuffled, fit, columns, _with_cap(200))
    for a, b in zip(capped.nets[0].parameters(), again.nets[0].parameters()):
        assert torch.equal(a, b)
    # Labels, level and replay buffer still come from every row; only the epochs see fewer.
    assert capped.history.period_means.equals(uncapped.history.period_means)
    assert len(capped.replay) == 300 and capped.replay.equals(uncapped.replay)
    child = fine_tune_trend_residual(capped, _artist_year(2013, seed=13), np.ones(300, dtype=bool), _with_cap(100))
    assert 2013 in child.history.periods


def test_scoring_in_slices_gives_the_same_predictions(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = _trained()
    batch = _artist_year(2013, seed=77)
    whole = model.predict(batch)
    monkeypatch.setattr(model_module, "PREDICT_BATCH_ROWS", 7)  # 300 rows in 43 slices
    # float32 matrix products round differently by slice size: far below a popularity point.
    np.testing.assert_allclose(model.predict(batch), whole, rtol=0, atol=1e-4)


# -- featurizing only the rows a training can use ----------------------------------------------------
def test_smallest_keys_is_a_bounded_stable_prefix_of_the_eligible_rows_in_key_order() -> None:
    keys = np.array([5, 3, 9, 3, 1, 7, 3], dtype=np.uint64)
    eligible = np.array([True, True, True, True, False, True, True])
    # Row 4 (key 1) is not eligible; the three rows of key 3 keep their order.
    assert model_module.smallest_keys(keys, eligible, None).tolist() == [1, 3, 6, 0, 5, 2]
    assert model_module.smallest_keys(keys, eligible, 4).tolist() == [1, 3, 6, 0]
    assert model_module.smallest_keys(keys, eligible, 100).tolist() == [1, 3, 6, 0, 5, 2]
    assert model_module.smallest_keys(keys, np.zeros(7, dtype=bool), 3).tolist() == []


def test_the_rows_featurized_are_the_prefix_of_all_rows_featurized() -> None:
    past = pd.concat([_artist_year(y, seed=y) for y in (2010, 2011, 2012)], ignore_index=True)
    columns = feature_columns(DatasetSpec(), past)
    fit = np.random.default_rng(1).random(len(past)) > 0.2
    history = model_module.LabelHistory.from_labelled(past, columns, mean_rows=fit)
    every, n_every = model_module._labelled_rows(history, past, fit, columns, SMALL.trend_residual)
    some, n_some = model_module._labelled_rows(history, past, fit, columns, SMALL.trend_residual, limit=250)
    assert n_every == n_some == fit.sum() and len(every) == fit.sum() and len(some) == 250
    assert every["row_key"].is_monotonic_increasing
    pd.testing.assert_frame_equal(some, every.head(250))


def _everything_featurized(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_module, "_featurized_rows", lambda config: None)


def test_featurizing_only_the_usable_rows_trains_the_same_models(monkeypatch: pytest.MonkeyPatch) -> None:
    past = pd.concat([_artist_year(y, seed=y) for y in (2010, 2011, 2012)], ignore_index=True)
    fit, columns = np.ones(len(past), dtype=bool), feature_columns(DatasetSpec(), past)
    new = _artist_year(2013, seed=13, n=600)  # 480 fit rows: more than the 300 featurized
    new_fit = np.arange(len(new)) % 5 != 0
    # A cap below the rows (200 of 900) and a replay buffer of 300: both samples are key prefixes.
    config = _with_cap(200)
    bounded = train_trend_residual(past, fit, columns, config)
    bounded_child = fine_tune_trend_residual(bounded, new, new_fit, _with_cap(150))
    _everything_featurized(monkeypatch)
    full = train_trend_residual(past, fit, columns, config)
    full_child = fine_tune_trend_residual(full, new, new_fit, _with_cap(150))
    for a_model, b_model in ((bounded, full), (bounded_child, full_child)):
        for a_net, b_net in zip(a_model.nets, b_model.nets):
            for a, b in zip(a_net.parameters(), b_net.parameters()):
                assert torch.equal(a, b)
        pd.testing.assert_frame_equal(a_model.replay, b_model.replay)
        np.testing.assert_array_equal(a_model.feature_mean, b_model.feature_mean)


def test_predictions_of_some_rows_are_those_rows_of_the_whole_batch() -> None:
    model, _ = _trained()
    batch = _artist_year(2013, seed=77)
    rows = np.arange(len(batch)) % 4 == 0
    # float32 products round differently by slice size: far below a popularity point.
    np.testing.assert_allclose(model_module.predict_rows(model, batch, rows), model.predict(batch)[rows], atol=1e-4)
    study = train_full(make_tracks(2010, n=300), SPOTIFY_AUDIO_FEATURES, "popularity", CONFIG)
    np.testing.assert_allclose(model_module.predict_rows(study, batch, rows), study.predict(batch)[rows], atol=1e-4)
