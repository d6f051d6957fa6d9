"""ClusterFilteredKNN: exactness, routing, recall and bad input."""

import copy
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.neighbors import NearestNeighbors

from skknn import ClusterFilteredKNN
from skknn._search import recall_at_k

from ._assertions import assert_same_neighbors, assert_same_radius, exact_problem
from .conftest import make_blobs_data
from .test_learned import METRICS, search_problems

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning"
)
FAST_ROUTER = {"hidden_layer_sizes": (32,), "epochs": 15, "batch_size": 64}


@pytest.mark.parametrize("metric, kwargs, ref_name", METRICS)
@given(problem=search_problems(), query_is_train=st.booleans(), n_clusters=st.integers(1, 6),
       router=st.sampled_from(["centroid", "mlp"]))
def test_probing_every_cluster_is_exact(metric, kwargs, ref_name, problem, query_is_train,
                                        n_clusters, router):
    if (prepared := exact_problem(problem, metric, query_is_train)) is None:
        return
    X, Q, k = prepared
    n_clusters = min(n_clusters, len(X))
    ours = ClusterFilteredKNN(
        n_neighbors=k, n_clusters=n_clusters, n_probe=n_clusters, router=router, epochs=1,
        hidden_layer_sizes=(4,), metric=metric, random_state=0, **kwargs,
    ).fit(X)
    ref = NearestNeighbors(n_neighbors=k, algorithm="brute", metric=metric, **kwargs).fit(X)
    scale = np.linalg.norm(X if Q is None else np.vstack([X, Q]), axis=1).max()
    dist, ind = ours.kneighbors(Q)
    ref_dist, ref_ind = ref.kneighbors(Q)
    assert_same_neighbors(dist, ind, ref_dist, ref_ind, scale=scale,
                          names=("ClusterFilteredKNN(n_probe=n_clusters)", "brute force"))
    radius = float(np.median(ref_dist))
    assert_same_radius(*ours.radius_neighbors(Q, radius=radius),
                       *ref.radius_neighbors(Q, radius=radius), radius, scale)


@pytest.fixture(scope="module")
def blobs():
    X = make_blobs_data(n_samples=1500, n_features=10, centers=15, seed=3)
    return X[:1300], X[1300:]


@pytest.fixture(scope="module", params=["centroid", "mlp"])
def fitted(request, blobs):
    X_train, _ = blobs
    return ClusterFilteredKNN(
        n_neighbors=10, n_clusters=25, router=request.param, random_state=0, **FAST_ROUTER
    ).fit(X_train)


def test_recall_is_monotone_in_n_probe(fitted, blobs):
    X_train, X_test = blobs
    ref_dist, _ = NearestNeighbors(n_neighbors=10).fit(X_train).kneighbors(X_test)
    recalls = []
    for n_probe in (1, 2, 3, 5, 8, 13, 25):
        nn = copy.copy(fitted)
        nn.search_params_ = {"n_probe": n_probe}
        recalls.append(recall_at_k(nn.kneighbors(X_test)[0], ref_dist))
    assert recalls == sorted(recalls), recalls
    assert recalls[-1] == 1.0


def test_route_and_candidates(fitted, blobs):
    X_train, X_test = blobs
    probes = fitted.route(X_test, n_probe=4)
    assert probes.shape == (len(X_test), 4)
    assert all(len(set(row)) == 4 for row in probes)
    assert np.all((probes >= 0) & (probes < fitted.n_clusters_))
    if fitted.router == "centroid":
        d = ((X_test[:, None, :] - fitted.cluster_centers_[None]) ** 2).sum(-1)
        assert_array_equal(np.sort(probes, 1), np.sort(np.argsort(d, 1)[:, :4], 1))
    sizes = np.bincount(fitted.labels_, minlength=fitted.n_clusters_)
    assert fitted.mean_candidates(X_test, 4) == pytest.approx(sizes[probes].sum(1).mean())
    assert fitted.mean_candidates(X_test, 25) == len(X_train)
    with pytest.raises(ValueError, match="n_probe must be an integer in"):
        fitted.route(X_test, n_probe=26)


def test_labels_and_centers(fitted, blobs):
    X_train, _ = blobs
    d = ((X_train[:, None, :] - fitted.cluster_centers_[None]) ** 2).sum(-1)
    assert_array_equal(fitted.labels_, d.argmin(1))
    assert fitted.cluster_centers_.shape == (25, X_train.shape[1])


def test_routers_share_the_partition_for_one_random_state(blobs):
    X_train, _ = blobs
    kwargs = {"n_clusters": 25, "random_state": 0}
    mlp = ClusterFilteredKNN(router="mlp", **FAST_ROUTER, **kwargs).fit(X_train)
    centroid = ClusterFilteredKNN(router="centroid", **kwargs).fit(X_train)
    assert_array_equal(mlp.labels_, centroid.labels_)
    assert_array_equal(mlp.cluster_centers_, centroid.cluster_centers_)


@pytest.mark.parametrize("params", [{"n_probe": 0}, {"n_probe": 2.5}, {"n_probe": True},
                                    {"candidates_per_neighbor": 3}, {}, [("n_probe", 3)]])
def test_reassigned_search_params_are_checked(fitted, blobs, params):
    nn = copy.copy(fitted)
    nn.search_params_ = params
    with pytest.raises(ValueError, match="search_params_ must be a dict with the keys"):
        nn.kneighbors(blobs[1])
    with pytest.raises(ValueError, match="search_params_ must be a dict with the keys"):
        nn.radius_neighbors(blobs[1], radius=1.0)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_queries_overflowing_the_router_are_routed_by_centroid(blobs):
    X_train, X_test = blobs
    nn = ClusterFilteredKNN(n_neighbors=3, n_clusters=25, n_probe=2, random_state=0,
                            **FAST_ROUTER).fit(X_train)
    Q = X_test[:4].copy()
    Q[0] = 1e140  # overflows float32, and the network's squares in float64
    Q[1] = X_test[1] + 1e4  # finite, but far outside the training data
    probes = nn.route(Q)
    assert len(set(probes[0])) == 2 and np.all((probes >= 0) & (probes < 25))
    assert_array_equal(probes[:2], nn._centroid_route(nn._space.rows(Q[:2]).block, 2))
    assert_array_equal(probes[2:], nn.route(Q[2:]))
    dist, ind = nn.kneighbors(Q)
    assert np.all(ind >= 0) and np.all(np.isfinite(dist[1:]))


def test_mlp_router_learns_where_neighbours_are(blobs):
    X_train, X_test = blobs
    nn = ClusterFilteredKNN(n_neighbors=10, n_clusters=25, n_probe=5, random_state=0,
                            **FAST_ROUTER).fit(X_train)
    ref_dist, _ = NearestNeighbors(n_neighbors=10).fit(X_train).kneighbors(X_test)
    assert recall_at_k(nn.kneighbors(X_test)[0], ref_dist) >= 0.9
    assert nn.n_iter_ >= 1 and len(nn.history_["loss"]) == nn.n_iter_


def test_soft_labels_are_neighbour_cluster_shares(blobs):
    X_train, _ = blobs
    nn = ClusterFilteredKNN(n_clusters=25, router="centroid", random_state=0).fit(X_train)
    rows = np.arange(50)
    labels = nn._soft_labels(rows)
    assert_allclose(labels.sum(1), 1.0, rtol=1e-6)
    # Each row's neighbours, itself excluded.
    ind = NearestNeighbors(n_neighbors=10).fit(X_train).kneighbors(return_distance=False)
    expected = np.zeros_like(labels)
    for r in rows:
        for j in ind[r]:
            expected[r, nn.labels_[j]] += 0.1
    assert_allclose(labels, expected, atol=1e-6)


def test_target_recall_picks_the_smallest_n_probe(blobs):
    X_train, _ = blobs
    nn = ClusterFilteredKNN(n_neighbors=10, n_clusters=25, router="centroid",
                            target_recall=0.95, random_state=0).fit(X_train)
    n_probe = nn.search_params_["n_probe"]
    assert nn.recall_ >= 0.95
    grid = [e["n_probe"] for e in nn._search_efforts()]
    if grid.index(n_probe) > 0:
        smaller = ClusterFilteredKNN(n_neighbors=10, n_clusters=25, router="centroid",
                                     n_probe=grid[grid.index(n_probe) - 1],
                                     random_state=0).fit(X_train)
        assert smaller.recall_ < 0.95


def test_pickle_and_deepcopy_identical(fitted, blobs):
    _, X_test = blobs
    expected = fitted.kneighbors(X_test)
    for other in (pickle.loads(pickle.dumps(fitted)), copy.deepcopy(fitted)):
        got = other.kneighbors(X_test)
        assert_array_equal(got[1], expected[1])
        assert_array_equal(got[0], expected[0])
        assert_array_equal(other.route(X_test), fitted.route(X_test))


def test_approximate_radius_is_subset_of_exact(fitted, blobs):
    X_train, X_test = blobs
    nn = copy.copy(fitted)
    nn.search_params_ = {"n_probe": 2}
    ind = nn.radius_neighbors(X_test, radius=3.0, return_distance=False)
    ref = NearestNeighbors(radius=3.0).fit(X_train).radius_neighbors(X_test, return_distance=False)
    assert all(set(a) <= set(b) for a, b in zip(ind, ref))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"n_clusters": 50}, "n_clusters=50 exceeds the 40 samples"),
        ({"n_clusters": 4, "n_probe": 5}, "n_probe=5 exceeds n_clusters=4"),
        ({"router": "tree"}, "router"),
        ({"n_probe": 0}, "n_probe"),
        ({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes must hold positive"),
    ],
)
def test_bad_parameters(params, match, rng):
    with pytest.raises(ValueError, match=match):
        ClusterFilteredKNN(**params).fit(rng.randn(40, 3))


@pytest.mark.parametrize(
    "X, error, match",
    [
        (np.array([[0.0, np.nan]] * 5), ValueError, "NaN"),
        (np.array([[0.0, np.inf]] * 5), ValueError, "infinity"),
        (np.empty((0, 3)), ValueError, "0 sample"),
        (np.array([["a", "b"]] * 5), ValueError, "convert"),
    ],
)
def test_bad_training_input(X, error, match):
    with pytest.raises(error, match=match):
        ClusterFilteredKNN().fit(X)


def test_one_sample_and_too_many_neighbours():
    nn = ClusterFilteredKNN(n_neighbors=1).fit([[1.0, 2.0]])
    assert nn.n_clusters_ == 1 and nn.recall_ == 1.0
    assert_array_equal(nn.kneighbors([[0.0, 0.0]])[1], [[0]])
    with pytest.raises(ValueError, match="n_neighbors <= n_samples_fit"):
        nn.kneighbors([[0.0, 0.0]], n_neighbors=2)
