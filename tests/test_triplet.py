"""TripletEmbedder: miners against a NumPy reference, learning, API, errors."""

import copy
import pickle

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline

from skknn import TripletEmbedder
from skknn._keras import import_keras
from skknn._triplet import _pk_order, _triplet_loss, mine

from ._assertions import in_fresh_process

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
FAST = {"hidden_layer_sizes": (32,), "n_components": 8, "epochs": 15, "batch_size": 64}


# ---------------------------------------------------------------- reference
def ref_batch_hard(D, y, margin):
    out = []
    for a in range(len(y)):
        pos = [D[a, p] for p in range(len(y)) if p != a and y[p] == y[a]]
        neg = [D[a, n] for n in range(len(y)) if y[n] != y[a]]
        out.append(max(max(pos) - min(neg) + margin, 0.0) if pos and neg else None)
    return out


def ref_semi_hard(D, y, margin):
    out = {}
    for a in range(len(y)):
        neg = [n for n in range(len(y)) if y[n] != y[a]]
        for p in range(len(y)):
            if p == a or y[p] != y[a] or not neg:
                continue
            farther = [D[a, n] for n in neg if D[a, n] > D[a, p]]
            d_an = min(farther) if farther else max(D[a, n] for n in neg)
            out[(a, p)] = max(D[a, p] - d_an + margin, 0.0)
    return out


def ref_batch_all(D, y, margin):
    out = {}
    for a in range(len(y)):
        for p in range(len(y)):
            for n in range(len(y)):
                if p != a and y[p] == y[a] and y[n] != y[a]:
                    out[(a, p, n)] = max(D[a, p] - D[a, n] + margin, 0.0)
    return out


def _points_on_a_line(xs):
    return np.array(xs, dtype=np.float32)[:, None]


@pytest.fixture
def batch():
    # Class 0 at 0, 1 and 5; class 1 at 2, 2.5 and 9 (one dimension).
    X = _points_on_a_line([0.0, 1.0, 5.0, 2.0, 2.5, 9.0])
    y = np.array([0, 0, 0, 1, 1, 1])
    return X, y, np.abs(X - X.T)


def _mine(D, y, miner, margin, max_positives=None):
    ops = import_keras().ops
    losses, valid = mine(
        ops, ops.convert_to_tensor(D), ops.convert_to_tensor(y), miner, margin, max_positives
    )
    return np.asarray(losses), np.asarray(valid)


def _per_anchor(losses, valid):
    """Each anchor's sorted losses over its valid entries."""
    return [sorted(row[v > 0].ravel().tolist()) for row, v in zip(losses, valid)]


def _ref_per_anchor(ref, n):
    return [sorted(v for key, v in ref.items() if key[0] == a) for a in range(n)]


def test_batch_hard_picks_farthest_positive_and_nearest_negative(batch):
    X, y, D = batch
    losses, valid = _mine(D, y, "batch_hard", 0.5)
    expected = ref_batch_hard(D, y, 0.5)
    assert_allclose(losses, expected, atol=1e-6)
    # Anchor 0: farthest positive 5 (d=5), nearest negative 2 (d=2): 5 - 2 + 0.5.
    assert losses[0] == pytest.approx(3.5)
    assert valid.tolist() == [1.0] * 6


@pytest.mark.parametrize("max_positives", [None, 2])
def test_semi_hard_picks_nearest_negative_beyond_the_positive(batch, max_positives):
    X, y, D = batch
    losses, valid = _mine(D, y, "semi_hard", 0.5, max_positives)
    expected = ref_semi_hard(D, y, 0.5)
    assert_allclose(sum(_per_anchor(losses, valid), []),
                    sum(_ref_per_anchor(expected, 6), []), atol=1e-6)
    # (a=0, p=1): negatives beyond d=1 are at 2, 2.5, 9: nearest is 2 -> 1 - 2 + 0.5 < 0.
    # (a=0, p=2): d_ap=5; beyond 5 only 9 -> 5 - 9 + 0.5 < 0.
    assert _per_anchor(losses, valid)[0] == [0.0, 0.0]
    # (a=2, p=0): d_ap=5; negatives at d=3, 2.5, 4: none beyond, farthest is 4 -> 1.5.
    # (a=2, p=1): d_ap=4; beyond 4 nothing, farthest 4 -> 0.5.
    assert _per_anchor(losses, valid)[2] == pytest.approx([0.5, 1.5])


@pytest.mark.parametrize("max_positives", [None, 2])
def test_batch_all_covers_every_valid_triplet(batch, max_positives):
    X, y, D = batch
    losses, valid = _mine(D, y, "batch_all", 0.5, max_positives)
    expected = ref_batch_all(D, y, 0.5)
    assert valid.sum() == len(expected) == 3 * 2 * 3 * 2
    assert_allclose(sum(_per_anchor(losses, valid), []),
                    sum(_ref_per_anchor(expected, 6), []), atol=1e-6)


@pytest.mark.parametrize("miner", ["batch_hard", "semi_hard", "batch_all"])
def test_loss_value_matches_reference_and_is_zero_when_margin_holds(miner, batch):
    X, y, D = batch
    loss = _triplet_loss(miner, 0.5, normalize=False)
    value = float(np.asarray(loss(y.astype(np.float32), X))[0])
    ref = {"batch_hard": ref_batch_hard, "semi_hard": ref_semi_hard,
           "batch_all": ref_batch_all}[miner](D, y, 0.5)
    values = [v for v in (ref if isinstance(ref, list) else ref.values()) if v is not None]
    if miner == "batch_all":
        values = [v for v in values if v > 0]
    assert value == pytest.approx(np.mean(values), rel=1e-5)
    # Classes 10 apart, each within 1: every triplet satisfies the margin.
    far = _points_on_a_line([0.0, 0.5, 1.0, 10.0, 10.5, 11.0])
    assert float(np.asarray(loss(y.astype(np.float32), far))[0]) == 0.0


def test_pk_order_groups_classes():
    rng = np.random.RandomState(0)
    codes = np.repeat([0, 1, 2], [9, 4, 6])
    order = _pk_order(np.arange(len(codes)), codes, 4, rng)
    groups = order.reshape(-1, 4)
    assert all(len(set(codes[g])) == 1 for g in groups)
    assert set(order) == set(range(len(codes)))


# ---------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def noisy_classes():
    # 5 classes separated in 3 dimensions, buried under 30 noisy ones:
    # raw Euclidean k-NN is poor, a learned metric can ignore the noise.
    rng = np.random.RandomState(0)
    y = rng.randint(0, 5, 900)
    centres = rng.randn(5, 3) * 3
    X = np.hstack([centres[y] + rng.randn(900, 3), rng.randn(900, 30) * 3])
    return X[:600], y[:600], X[600:], y[600:]


def test_embedding_beats_raw_features(noisy_classes):
    X, y, X_test, y_test = noisy_classes
    raw = KNeighborsClassifier(5).fit(X, y).score(X_test, y_test)
    embedder = TripletEmbedder(**{**FAST, "epochs": 80}, random_state=0)
    learned = make_pipeline(embedder, KNeighborsClassifier(5)).fit(X, y).score(X_test, y_test)
    # Measured: raw 0.51, learned 0.80; k-NN on the 3 informative features 0.94.
    assert learned > raw + 0.2, (learned, raw)


def test_fitted_attributes_and_transform(noisy_classes):
    X, y, X_test, _ = noisy_classes
    emb = TripletEmbedder(**FAST, random_state=0).fit(X, y)
    Z = emb.transform(X_test)
    assert Z.shape == (len(X_test), 8) and Z.dtype == X_test.dtype
    assert_allclose(np.linalg.norm(Z, axis=1), 1.0, rtol=1e-5)
    assert_array_equal(emb.classes_, np.arange(5))
    assert emb.n_iter_ == len(emb.history_["loss"]) == len(emb.history_["val_loss"])
    assert emb.history_["learning_rate"][0] == pytest.approx(emb.learning_rate)
    assert list(emb.get_feature_names_out()) == [f"tripletembedder{i}" for i in range(8)]
    raw = TripletEmbedder(**FAST, normalize=False, random_state=0).fit(X, y)
    assert not np.allclose(np.linalg.norm(raw.transform(X_test), axis=1), 1.0)


def test_plain_network_and_constant_schedule(noisy_classes):
    X, y, X_test, _ = noisy_classes
    kw = {**FAST, "hidden_layer_sizes": (32, 16), "random_state": 0}
    plain = TripletEmbedder(**kw, batch_norm=False, learning_rate_schedule="constant").fit(X, y)
    assert set(plain.history_) == {"loss", "val_loss"}
    normed = TripletEmbedder(**kw).fit(X, y)
    # Batch norm is folded away: both are 3 dense layers at inference.
    assert len(plain._network.layers) == len(normed._network.layers) == 3
    assert not np.allclose(plain.transform(X_test), normed.transform(X_test))


def test_grid_search_over_margin_and_miner(noisy_classes):
    X, y, _, _ = noisy_classes
    pipe = make_pipeline(TripletEmbedder(**{**FAST, "epochs": 3}, random_state=0),
                         KNeighborsClassifier(5))
    grid = GridSearchCV(pipe, {"tripletembedder__margin": [0.1, 0.5],
                               "tripletembedder__miner": ["batch_hard", "batch_all"]}, cv=2)
    grid.fit(X, y)
    assert set(grid.best_params_) == {"tripletembedder__margin", "tripletembedder__miner"}
    assert len(grid.cv_results_["mean_test_score"]) == 4


def test_string_labels_and_reproducibility(noisy_classes):
    X, y, X_test, _ = noisy_classes
    names = np.array(["ankle", "bag", "coat", "dress", "shirt"])[y]
    a = TripletEmbedder(**FAST, random_state=3).fit(X, names)
    assert_array_equal(a.classes_, np.unique(names))
    b = clone(a).fit(X, names)
    assert_array_equal(a.transform(X_test), b.transform(X_test))


def test_pickle_deepcopy_and_fresh_process(noisy_classes, tmp_path):
    X, y, X_test, _ = noisy_classes
    emb = TripletEmbedder(**FAST, random_state=0).fit(X, y)
    for other in (pickle.loads(pickle.dumps(emb)), copy.deepcopy(emb)):
        assert_array_equal(other.transform(X_test), emb.transform(X_test))
    Z = in_fresh_process(tmp_path, emb, X_test, "obj.transform(X)",
                         check="assert 'keras' not in sys.modules")
    assert_array_equal(Z, emb.transform(X_test))


def test_bad_targets(noisy_classes):
    X, y, _, _ = noisy_classes
    with pytest.raises(ValueError, match="Unknown label type"):
        TripletEmbedder(**FAST).fit(X, y + 0.5)
    with pytest.raises(ValueError, match="at least 2 classes"):
        TripletEmbedder(**FAST).fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="requires y to be passed"):
        TripletEmbedder(**FAST).fit(X, None)


def test_single_example_classes_warn_not_crash(noisy_classes):
    X, y, X_test, _ = noisy_classes
    y = y.copy()
    y[:2] = [7, 8]  # two classes with one example each
    with pytest.warns(UserWarning, match="2 class\\(es\\) have a single example"):
        emb = TripletEmbedder(**FAST, random_state=0).fit(X, y)
    assert np.isfinite(emb.transform(X_test)).all()
