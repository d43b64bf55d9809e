from pathlib import Path

import numpy as np
import torch

from tracks import make_tracks
from driftwheel.config import SPOTIFY_AUDIO_FEATURES, TrainingConfig
from driftwheel.evaluate import rmse
from driftwheel.model import PopularityNet, fine_tune, load, save, train_full

CONFIG = TrainingConfig(epochs=20, fine_tune_epochs=20)


def test_network_shape_is_the_studys() -> None:
    net = PopularityNet(13)
    assert [(l.in_features, l.out_features) for l in net.layers] == [(13, 32), (32, 32), (32, 32), (32, 50), (50, 1)]


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
    child = fine_tune(parent, new, "popularity", TrainingConfig(freeze_layers=3, fine_tune_epochs=20))
    for i, (a, b) in enumerate(zip(parent.net.layers, child.net.layers)):
        same = torch.equal(a.weight, b.weight)
        assert same == (i < 3), f"layer {i}"
    test = make_tracks(2011, n=300, level=60, seed=2)
    assert rmse(test["popularity"], child.predict(test)) < rmse(test["popularity"], parent.predict(test)) - 3


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    frame = make_tracks(2010, n=200)
    model = train_full(frame, SPOTIFY_AUDIO_FEATURES, "popularity", TrainingConfig(epochs=2))
    files = save(model, tmp_path)
    loaded = load(files)
    assert np.allclose(loaded.predict(frame), model.predict(frame))
