"""Shared Keras helpers: batch normalisation folding and the training loop."""

from collections import OrderedDict
from unittest import mock

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning

import skknn._keras
from skknn import AutoencoderEmbedder, ClusterFilteredKNN, TripletEmbedder
from skknn._keras import (
    LR_DIVISOR,
    MLPWeights,
    batch_norm_momentum,
    build_mlp,
    import_keras,
    train,
)

from .conftest import FAST_AE

FAST_TRIPLET = {"hidden_layer_sizes": (16,), "n_components": 4, "epochs": 3}
SEEDED_AE = {**FAST_AE, "random_state": 0}


def test_batch_norm_folds_into_the_numpy_weights():
    rng = np.random.RandomState(0)
    X = rng.randn(200, 6).astype(np.float32) * 3 + 1
    model = build_mlp(6, [5, 4, 3], ["relu", "tanh", "linear"], 0, batch_norm=True)
    keras = import_keras()
    batch_norms = [layer for layer in model.layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(batch_norms) == 2
    # Train a little so that scales, shifts and running statistics move.
    for layer in batch_norms:
        layer.momentum = 0.5
    model.compile(optimizer="adam", loss="mse")
    model.fit(X, rng.randn(200, 3).astype(np.float32), epochs=3, batch_size=32, verbose=0)
    network = MLPWeights.from_keras(model)
    assert [act for _, _, act in network.layers] == ["relu", "tanh", "linear"]
    expected = np.asarray(model(X, training=False))
    assert_allclose(network(X), expected, rtol=1e-4, atol=1e-5)


def test_mlp_without_batch_norm_is_dense_only():
    model = build_mlp(6, [5, 3], ["relu", "linear"], 0)
    network = MLPWeights.from_keras(model)
    X = np.random.RandomState(0).randn(10, 6).astype(np.float32)
    assert len(model.layers) == len(network.layers) == 2
    assert_allclose(network(X), np.asarray(model(X)), rtol=1e-5, atol=1e-6)


def test_initial_weights_are_seeded_glorot_uniform_drawn_with_numpy(monkeypatch):
    # Keras' seeded initialisers draw with the backend's random ops, which
    # JAX compiled anew for every kernel shape (0.25-0.3 s each); the
    # networks' kernels are drawn with NumPy, from the same distribution.
    import_keras()  # (the backend skknn chooses, before Keras' own modules)
    from keras.src.backend import random

    def backend_random(*args, **kwargs):
        raise AssertionError("initial weights drawn with the backend's random ops")

    monkeypatch.setattr(random, "uniform", backend_random)

    def kernels(seed):
        model = build_mlp(300, [200, 5], ["relu", "linear"], seed)
        return [W for W, _, _ in MLPWeights.from_keras(model).layers]

    first, again, other = kernels(3), kernels(3), kernels(4)
    for a, b, c in zip(first, again, other):
        assert_allclose(a, b)
        assert not np.allclose(a, c)
    # Glorot uniform: within +-sqrt(6 / (fan_in + fan_out)), spread over it.
    limit = np.sqrt(6 / (300 + 200))
    assert np.abs(first[0]).max() <= limit
    assert_allclose(first[0].std(), limit / np.sqrt(3), rtol=0.02)


@pytest.mark.parametrize(
    "n_train, batch_size, expected",
    [(54_000, 256, 0.99), (540, 64, 1 - 1 / 9), (64, 64, 0.0), (10, 64, 0.0)],
)
def test_batch_norm_momentum_spans_about_an_epoch(n_train, batch_size, expected):
    assert batch_norm_momentum(n_train, batch_size) == pytest.approx(expected)


class _ScriptedModel:
    """Stands in for a Keras model and its epochs: replays a scripted loss
    per epoch.

    Its "weights" are the number of the epoch that produced them, so the test
    can see which epoch's weights were restored and when.
    """

    def __init__(self, losses, layers=()):
        self.losses = list(losses)
        self.layers = list(layers)
        self.epoch = 0
        self.weights = 0
        self.restored = []
        self.rows = []

    def run_epoch(self, order):
        self.rows.append(order.tolist())
        loss = self.losses[self.epoch]
        self.epoch += 1
        self.weights = self.epoch
        return {"loss": loss}

    def get_weights(self):
        return self.weights

    def set_weights(self, weights):
        self.weights = weights
        self.restored.append((self.epoch, weights))


def _train(losses, schedule, n_iter_no_change=3, n_rows=8, layers=()):
    model = _ScriptedModel(losses, layers)
    epochs = mock.patch.object(skknn._keras, "_epoch_runner", lambda model, *args: model.run_epoch)
    params = {
        "epochs": len(losses), "batch_size": 4, "learning_rate": 1.0,
        "validation_fraction": 0.0, "n_iter_no_change": n_iter_no_change, "tol": 0.0,
        "verbose": 0, "learning_rate_schedule": schedule,
    }
    X = np.arange(n_rows, dtype=np.float32)[:, None]
    with epochs:
        history = train(model, "mse", X, X, params=params, rng=np.random.RandomState(0),
                        owner="test")
    return model, history


def test_constant_schedule_stops_after_n_iter_no_change():
    model, history = _train([5, 4, 3, 3.5, 3.2, 3.1, 1, 1, 1], "constant")
    assert len(history["loss"]) == 6 and "learning_rate" not in history
    assert model.restored == [(6, 3)]  # the best epoch (3) is restored at the end


def test_adaptive_schedule_drops_the_rate_from_the_best_weights():
    # Epoch:   1  2  3  4    5    6    7    8  9    10   11   12
    losses = [5, 4, 3, 3.5, 3.2, 3.1, 2.5, 3, 2.6, 2.7, 2.8, 9, 9]
    model, history = _train(losses, "adaptive")
    # No improvement after epoch 3 for 3 epochs: back to epoch 3's weights,
    # rate / 5; patience becomes 3 // 3 = 1. Epoch 7 improves; epoch 8 does
    # not: back to epoch 7, rate / 25. Epoch 9 does not improve and no drop is
    # left: stop, with epoch 7's weights.
    assert model.restored == [(6, 3), (8, 7), (9, 7)]
    assert history["learning_rate"] == pytest.approx(
        [1.0] * 6 + [1 / LR_DIVISOR] * 2 + [1 / LR_DIVISOR**2]
    )
    assert len(history["loss"]) == 9


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("n_rows, batch_norm, expected", [
    (10, False, 10), (10, True, 8), (3, True, 3), (8, True, 8),
])
def test_batch_norm_networks_leave_out_the_incomplete_batch(n_rows, batch_norm, expected):
    keras = import_keras()
    # Nested, as in a model built from sub-models.
    layers = [keras.Sequential([keras.layers.BatchNormalization()])] if batch_norm else []
    model, _ = _train([3, 2, 1], "constant", n_rows=n_rows, layers=layers)
    assert all(len(rows) == expected for rows in model.rows)
    if batch_norm:
        momentum = layers[0].layers[0].momentum
        assert momentum == batch_norm_momentum(n_rows, min(4, n_rows))
    # Each epoch draws its own order, so different rows are left out.
    if expected < n_rows:
        assert len({tuple(sorted(rows)) for rows in model.rows}) > 1


def test_float32_scaling_matches_float64_and_survives_overflow():
    from skknn._keras import apply_scaling, fit_scaling

    rng = np.random.RandomState(0)
    X = (rng.normal(size=(50, 8)) + 1e4).astype(np.float32)
    mean, scale = fit_scaling(X)
    fast = apply_scaling(X, mean, scale)
    assert fast.dtype == np.float32
    assert_allclose(fast, (X - mean) / scale, atol=1e-3)
    # float32 X - mean overflows here; the float64 route still gives finite values.
    big = np.array([[3e38], [-3e38]], dtype=np.float32)
    out = apply_scaling(big, np.array([-1e38]), 10.0)
    assert out.dtype == np.float32
    assert_allclose(out, [[4e37], [-2e37]], rtol=1e-6)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_compiled_epochs_train_as_keras_fit_does(batch_norm, monkeypatch):
    # On JAX an epoch is one compiled scan of the training steps; on other
    # backends it is Keras' fit. Both take the same steps from the same
    # weights: the same losses, validation losses and weights, to float32
    # rounding (42 training rows: batches of 16, 16 and 10, or 16 and 16
    # with batch normalisation; 8 validation rows, batches of 8).
    keras = import_keras()
    if not skknn._keras._compiled_epochs(keras):
        pytest.skip("compiled epochs are for the JAX backend")
    rng = np.random.RandomState(0)
    X = rng.randn(50, 5).astype(np.float32)
    Y = np.tanh(X @ rng.randn(5, 3)).astype(np.float32)
    params = {"epochs": 4, "batch_size": 16, "learning_rate": 0.01,
              "validation_fraction": 0.16, "n_iter_no_change": 10, "tol": 0.0, "verbose": 0}

    def fitted(compiled):
        monkeypatch.setattr(skknn._keras, "_compiled_epochs", lambda keras: compiled)
        model = build_mlp(5, [7, 3], ["relu", "linear"], 0, batch_norm=batch_norm)
        with pytest.warns(ConvergenceWarning):  # every epoch improves
            history = train(model, "mse", X, Y, params=params, rng=np.random.RandomState(1),
                            owner="test")
        return history, model.get_weights()

    (history, weights), (expected, expected_weights) = fitted(True), fitted(False)
    assert history.keys() == expected.keys() == {"loss", "val_loss"}
    for key in history:
        assert_allclose(history[key], expected[key], rtol=1e-5)
    # Kernel, batch normalisation (gamma, beta, mean, variance), kernel and
    # bias; or two kernels and biases.
    assert len(weights) == len(expected_weights) == (7 if batch_norm else 4)
    for w, e in zip(weights, expected_weights):
        assert_allclose(w, e, rtol=1e-4, atol=1e-6)
    # Training moved the weights, and the losses went down.
    assert history["loss"][-1] < history["loss"][0]


def test_compiled_epochs_step_with_the_learning_rate_the_schedule_sets():
    # The adaptive schedule assigns the optimizer's learning rate between
    # epochs; a compiled epoch reads it (and every weight) from the variables
    # anew, and writes the weights back to the model.
    keras = import_keras()
    if not skknn._keras._compiled_epochs(keras):
        pytest.skip("compiled epochs are for the JAX backend")
    rng = np.random.RandomState(0)
    X = rng.randn(40, 4).astype(np.float32)
    model = build_mlp(4, [3, 4], ["relu", "linear"], 0)
    optimizer = keras.optimizers.Adam(learning_rate=0.01)
    run = skknn._keras._epoch_runner(model, "mse", optimizer, X, X, np.arange(30, 40), 8)
    before = model.get_weights()
    run(np.arange(30))
    moved = model.get_weights()
    assert not any(np.allclose(a, b) for a, b in zip(before, moved))
    optimizer.learning_rate.assign(0.0)
    logs = run(rng.permutation(30))
    for a, b in zip(moved, model.get_weights()):
        assert_allclose(a, b)
    # (Adam's steps went on: 4 batches an epoch, the last of 6 rows.)
    assert int(optimizer.iterations) == 8
    assert logs["loss"] > 0 and logs["val_loss"] > 0


def _fitted_outputs(estimator, X, y=None):
    """What a fitted network gives (the router's probabilities, or the
    embedding), to compare fits bit for bit."""
    estimator.fit(X, y)
    if hasattr(estimator, "_router_proba"):
        return estimator._router_proba(estimator._space.fitted.block[:50])[0]
    return estimator.transform(X[:50])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # tiny epochs
@pytest.mark.parametrize("first, second", [
    # Settings the compiled epochs close over: other programs.
    (AutoencoderEmbedder(distance_weight=0.0, **SEEDED_AE),
     AutoencoderEmbedder(distance_weight=1.0, **SEEDED_AE)),
    (AutoencoderEmbedder(activation="relu", **SEEDED_AE),
     AutoencoderEmbedder(activation="tanh", **SEEDED_AE)),
    (TripletEmbedder(margin=0.1, random_state=0, **FAST_TRIPLET),
     TripletEmbedder(margin=1.0, random_state=0, **FAST_TRIPLET)),
    (TripletEmbedder(miner="batch_hard", random_state=0, **FAST_TRIPLET),
     TripletEmbedder(miner="batch_all", random_state=0, **FAST_TRIPLET)),
    # Settings they read as arguments: the same programs.
    (TripletEmbedder(learning_rate=0.01, random_state=0, **FAST_TRIPLET),
     TripletEmbedder(learning_rate=0.001, random_state=1, **FAST_TRIPLET)),
    (ClusterFilteredKNN(n_clusters=6, epochs=3, random_state=0),
     ClusterFilteredKNN(n_clusters=6, epochs=3, learning_rate=0.01, random_state=1)),
])
def test_networks_share_compiled_epochs_only_where_they_compute_the_same(first, second):
    # A network reuses the jitted epochs of an earlier one of the same key
    # (layers, loss and its settings) and variables' shapes; trained after
    # the first, the second network must come out as it does on its own.
    if not skknn._keras._compiled_epochs(import_keras()):
        pytest.skip("compiled epochs are for the JAX backend")
    X, y = make_blobs(n_samples=160, n_features=6, centers=4, random_state=0)
    X = X.astype(np.float32)
    with mock.patch.object(skknn._keras, "_program_cache", OrderedDict()) as programs:
        alone = _fitted_outputs(clone(second), X, y)
        programs.clear()
        _fitted_outputs(clone(first), X, y)
        after_first = _fitted_outputs(clone(second), X, y)
        shared = len(programs) == 1
    np.testing.assert_array_equal(after_first, alone)
    assert shared == (first.get_params()["learning_rate"] != second.get_params()["learning_rate"])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # tiny epochs
def test_a_second_fit_of_the_same_shapes_compiles_nothing():
    if not skknn._keras._compiled_epochs(import_keras()):
        pytest.skip("compiled epochs are for the JAX backend")
    X = make_blobs(n_samples=300, n_features=5, centers=5, random_state=0)[0]
    built = []
    real = skknn._keras._JaxEpochs._programs

    def programs(*args):
        built.append(args)
        return real(*args)

    with mock.patch.object(skknn._keras, "_program_cache", OrderedDict()), \
            mock.patch.object(skknn._keras._JaxEpochs, "_programs", staticmethod(programs)):
        for seed in range(3):
            ClusterFilteredKNN(n_clusters=8, epochs=2, random_state=seed).fit(X)
        assert len(built) == 1
        # Other layers: programs of their own.
        ClusterFilteredKNN(n_clusters=8, epochs=2, hidden_layer_sizes=(32,)).fit(X)
        assert len(built) == 2
