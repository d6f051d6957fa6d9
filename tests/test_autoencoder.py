"""AutoencoderEmbedder: learning, early stopping, persistence and errors."""

import copy
import pickle
import warnings

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning

from skknn import AutoencoderEmbedder

from ._assertions import in_fresh_process
from .conftest import FAST_AE

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def digits():
    X, _ = load_digits(return_X_y=True)
    return X


@pytest.fixture(scope="module")
def fitted(digits):
    return AutoencoderEmbedder(
        n_components=8, hidden_layer_sizes=(64,), epochs=40, random_state=0
    ).fit(digits)


def test_learns_a_better_reconstruction_than_the_mean(fitted, digits):
    Z = fitted.transform(digits)
    assert Z.shape == (len(digits), 8) and Z.dtype == digits.dtype
    recon = fitted.inverse_transform(Z)
    assert recon.shape == digits.shape
    mse = np.mean((recon - digits) ** 2)
    baseline = np.mean((digits - digits.mean(0)) ** 2)
    assert mse < 0.5 * baseline
    # The loss is reported per epoch and decreases overall.
    assert fitted.history_["loss"][-1] < fitted.history_["loss"][0]
    assert len(fitted.history_["val_loss"]) == fitted.n_iter_


def test_reconstruction_is_comparable_to_pca(fitted, digits):
    pca = PCA(8).fit(digits)
    pca_mse = np.mean((pca.inverse_transform(pca.transform(digits)) - digits) ** 2)
    ae_mse = np.mean((fitted.inverse_transform(fitted.transform(digits)) - digits) ** 2)
    assert ae_mse < 1.5 * pca_mse


def test_early_stopping_stops_and_keeps_the_best_epoch(digits):
    emb = AutoencoderEmbedder(
        n_components=4, hidden_layer_sizes=(16,), epochs=500, n_iter_no_change=2, tol=0.05,
        random_state=0,
    ).fit(digits[:300])
    assert emb.n_iter_ < 500
    val = emb.history_["val_loss"]
    assert len(val) == emb.n_iter_
    # Each of the last n_iter_no_change epochs failed to beat the best so far
    # by tol, and the one before them did not.
    n = len(val)
    assert all(val[i] > min(val[:i]) - 0.05 for i in (n - 2, n - 1))
    assert n == 3 or val[n - 3] <= min(val[: n - 3]) - 0.05


def test_warns_when_epochs_run_out(digits):
    with pytest.warns(ConvergenceWarning, match=r"\[AutoencoderEmbedder\] stopped after epochs=1"):
        AutoencoderEmbedder(**{**FAST_AE, "epochs": 1}).fit(digits[:100])


def test_no_warning_when_epochs_run_out_after_the_loss_stopped_improving(digits):
    # No epoch after the first beats it by tol: epochs ran out, but the loss
    # was not still improving (this warned).
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        emb = AutoencoderEmbedder(**{**FAST_AE, "epochs": 4}, n_iter_no_change=10, tol=1e9,
                                  random_state=0).fit(digits[:100])
    assert emb.n_iter_ == 4


def test_training_loss_is_monitored_without_validation(digits):
    emb = AutoencoderEmbedder(**FAST_AE, validation_fraction=0.0, random_state=0)
    emb.fit(digits[:100])
    assert set(emb.history_) == {"loss"}


def test_one_scale_keeps_geometry_and_constant_data_is_fine(digits):
    X = digits[:120]
    emb = AutoencoderEmbedder(**FAST_AE, random_state=0).fit(X)
    assert emb.scale_ == pytest.approx(np.sqrt(np.mean((X - X.mean(0)) ** 2)))
    constant = np.full((50, 4), 3.0)
    emb = AutoencoderEmbedder(**FAST_AE, random_state=0).fit(constant)
    assert emb.scale_ == 1.0
    assert np.isfinite(emb.transform(constant)).all()


def test_reproducible_and_seed_dependent(digits):
    a = AutoencoderEmbedder(**FAST_AE, random_state=1).fit(digits[:200])
    b = clone(a).fit(digits[:200])
    c = AutoencoderEmbedder(**FAST_AE, random_state=2).fit(digits[:200])
    assert_array_equal(a.transform(digits[:20]), b.transform(digits[:20]))
    assert not np.allclose(a.transform(digits[:20]), c.transform(digits[:20]))


def test_pickle_and_deepcopy_identical(fitted, digits):
    for other in (pickle.loads(pickle.dumps(fitted)), copy.deepcopy(fitted)):
        assert_array_equal(other.transform(digits[:50]), fitted.transform(digits[:50]))


def test_loads_in_a_fresh_process(fitted, digits, tmp_path):
    Z = in_fresh_process(tmp_path, fitted, digits[:25], "obj.transform(X)")
    assert_array_equal(Z, fitted.transform(digits[:25]))


def test_feature_names_out(fitted):
    names = fitted.get_feature_names_out()
    assert list(names) == [f"autoencoderembedder{i}" for i in range(8)]


def test_verbose_prints_epochs(capsys, digits):
    AutoencoderEmbedder(**FAST_AE, verbose=1, random_state=0).fit(digits[:100])
    out = capsys.readouterr().out
    assert out.count("[AutoencoderEmbedder] epoch") == FAST_AE["epochs"]
    assert "val_loss=" in out


@pytest.mark.parametrize(
    "params, match",
    [
        ({"hidden_layer_sizes": (8, 0)}, "hidden_layer_sizes must hold positive"),
        ({"n_components": 0}, "n_components"),
        ({"activation": "swish"}, "activation"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"learning_rate": 0.0}, "learning_rate"),
    ],
)
def test_bad_parameters(params, match, digits):
    with pytest.raises(ValueError, match=match):
        AutoencoderEmbedder(**{**FAST_AE, **params}).fit(digits[:50])


def test_inverse_transform_checks_width(fitted):
    with pytest.raises(ValueError, match="n_components=8"):
        fitted.inverse_transform(np.zeros((2, 5)))


def test_diverging_training_raises(digits):
    with pytest.raises(FloatingPointError, match="lower learning_rate"):
        AutoencoderEmbedder(**FAST_AE, learning_rate=1e30, random_state=0).fit(digits * 1e30)
