"""ClusterFilteredKNN: exactness, routing, recall and bad input."""

import copy
import importlib.util
import pickle
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.neighbors import NearestNeighbors

from skknn import ClusterFilteredKNN
from skknn import _partitions as partitions
from skknn import _routing as routing
from skknn._keras import import_keras, share_crossentropy
from skknn._routing import cluster_shares, neighbour_clusters, probe_order
from skknn._search import recall_at_k

from ._assertions import assert_same_neighbors, assert_same_radius, exact_problem
from .conftest import make_blobs_data
from .test_learned import METRICS, search_problems

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning"
)
FAST_ROUTER = {"hidden_layer_sizes": (32,), "epochs": 15, "batch_size": 64}
# partition='graph' needs pymetis (installed with skknn where it has wheels).
HAVE_PYMETIS = importlib.util.find_spec("pymetis") is not None
PARTITIONS = ["kmeans", "graph"] if HAVE_PYMETIS else ["kmeans"]
needs_pymetis = pytest.mark.skipif(not HAVE_PYMETIS, reason="partition='graph' needs pymetis")


@pytest.mark.parametrize("metric, kwargs, ref_name", METRICS)
@given(problem=search_problems(), query_is_train=st.booleans(), n_clusters=st.integers(1, 6),
       router=st.sampled_from(["centroid", "mlp"]), partition=st.sampled_from(PARTITIONS),
       by_mass=st.booleans())
def test_probing_every_cluster_is_exact(metric, kwargs, ref_name, problem, query_is_train,
                                        n_clusters, router, partition, by_mass):
    if (prepared := exact_problem(problem, metric, query_is_train)) is None:
        return
    X, Q, k = prepared
    n_clusters = min(n_clusters, len(X))
    # Every cluster: n_probe=n_clusters, or (the 'mlp' router) probability mass 1.
    effort = {"probe_mass": 1.0} if by_mass and router == "mlp" else {"n_probe": n_clusters}
    ours = ClusterFilteredKNN(
        n_neighbors=k, n_clusters=n_clusters, router=router, partition=partition, epochs=1,
        hidden_layer_sizes=(4,), metric=metric, random_state=0, **effort, **kwargs,
    ).fit(X)
    ref = NearestNeighbors(n_neighbors=k, algorithm="brute", metric=metric, **kwargs).fit(X)
    scale = np.linalg.norm(X if Q is None else np.vstack([X, Q]), axis=1).max()
    dist, ind = ours.kneighbors(Q)
    ref_dist, ref_ind = ref.kneighbors(Q)
    assert_same_neighbors(dist, ind, ref_dist, ref_ind, scale=scale,
                          names=("ClusterFilteredKNN(every cluster probed)", "brute force"))
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
    assert fitted.cluster_centers_.shape == (fitted.n_clusters_, X_train.shape[1])
    if fitted.partition_ == "kmeans":
        # k-means cells: each row belongs to its nearest centre.
        d = ((X_train[:, None, :] - fitted.cluster_centers_[None]) ** 2).sum(-1)
        assert_array_equal(fitted.labels_, d.argmin(1))
    else:
        # Other partitions: the centres are the clusters' means.
        for c in range(fitted.n_clusters_):
            assert_allclose(fitted.cluster_centers_[c], X_train[fitted.labels_ == c].mean(0),
                            rtol=1e-5, atol=1e-5)


def test_partition_auto_is_graph_for_the_mlp_router(fitted):
    expected = "graph" if fitted.router == "mlp" and HAVE_PYMETIS else "kmeans"
    assert fitted.partition_ == expected


@needs_pymetis
def test_graph_partition_is_balanced_and_cuts_fewer_neighbour_pairs(rng):
    X = rng.rand(1300, 10)
    kwargs = {"n_clusters": 25, "router": "centroid", "random_state": 0}
    graph = ClusterFilteredKNN(partition="graph", **kwargs).fit(X)
    kmeans = ClusterFilteredKNN(partition="kmeans", **kwargs).fit(X)
    # METIS balances the training rows; the held-out fifth joins afterwards.
    sizes = np.bincount(graph.labels_)
    assert graph.n_clusters_ == 25, sizes
    assert 0.7 * 1300 / 25 <= sizes.min() and sizes.max() <= 1.3 * 1300 / 25, sizes
    ind = NearestNeighbors(n_neighbors=10).fit(X).kneighbors(return_distance=False)

    def cut(labels):
        return np.mean(labels[ind] != labels[:, None])

    assert cut(graph.labels_) < cut(kmeans.labels_)


def test_routers_share_the_partition_for_one_random_state(blobs):
    X_train, _ = blobs
    kwargs = {"n_clusters": 25, "random_state": 0, "partition": "kmeans"}
    mlp = ClusterFilteredKNN(router="mlp", **FAST_ROUTER, **kwargs).fit(X_train)
    centroid = ClusterFilteredKNN(router="centroid", **kwargs).fit(X_train)
    assert_array_equal(mlp.labels_, centroid.labels_)
    assert_array_equal(mlp.cluster_centers_, centroid.cluster_centers_)


def test_given_partition(blobs):
    X_train, X_test = blobs
    labels = np.arange(len(X_train)) % 7
    nn = ClusterFilteredKNN(partition=labels, router="centroid", n_probe=2,
                            random_state=0).fit(X_train)
    assert nn.partition_ == "given" and nn.n_clusters_ == 7
    assert_array_equal(nn.labels_, labels)
    assert_allclose(nn.cluster_centers_[3], X_train[labels == 3].mean(0), rtol=1e-6)
    # The search looks only in the probed clusters' rows.
    probes = nn.route(X_test)
    ind = nn.kneighbors(X_test, return_distance=False)
    assert all(set(labels[i]) <= set(p) for i, p in zip(ind, probes))


@pytest.mark.parametrize(
    "labels, params, match",
    [
        (np.zeros(10, dtype=int), {}, r"shape \(n_samples,\) = \(40,\)"),
        (np.zeros(40), {}, "must be integers"),
        (np.r_[np.zeros(20, int), np.full(20, 2)], {}, "every cluster used"),
        (np.r_[np.zeros(20, int), np.full(20, -1)], {}, "every cluster used"),
        (np.arange(40) % 4, {"n_clusters": 5}, "given partition has 4 clusters"),
        (np.arange(40) % 4, {"n_probe": 5}, "n_probe=5 exceeds n_clusters=4"),
    ],
)
def test_bad_given_partition(labels, params, match, rng):
    with pytest.raises(ValueError, match=match):
        ClusterFilteredKNN(partition=labels, router="centroid", **params).fit(rng.randn(40, 3))


def test_graph_partition_needs_pymetis(blobs, monkeypatch):
    X_train, _ = blobs
    monkeypatch.setitem(sys.modules, "pymetis", None)  # import pymetis fails
    with pytest.raises(ImportError, match=r"partition='graph'.*skknn\[graph\]"):
        ClusterFilteredKNN(partition="graph", router="centroid").fit(X_train)
    # 'auto' falls back to k-means cells.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    nn = ClusterFilteredKNN(n_clusters=9, n_probe=3, **FAST_ROUTER).fit(X_train[:300])
    assert nn.partition_ == "kmeans"


def _in_row_order(X):
    """A fitted estimator whose space keeps the rows in their order (one cluster)."""
    return ClusterFilteredKNN(partition=np.zeros(len(X), dtype=int), router="centroid",
                              random_state=0).fit(X)


def test_neighbor_graph_exact_and_approximate(blobs, monkeypatch):
    X_train, _ = blobs
    nn = _in_row_order(X_train)
    rng = np.random.RandomState(0)
    expected = NearestNeighbors(n_neighbors=10).fit(X_train).kneighbors(return_distance=False)
    graph = partitions.neighbor_graph(nn._space, 10, None, 1, rng)
    assert_array_equal(np.sort(graph, 1), np.sort(expected, 1))
    # Beyond _EXACT_GRAPH_UP_TO rows: principal-component codes, re-ranked.
    monkeypatch.setattr(partitions, "_EXACT_GRAPH_UP_TO", 100)
    _, _, codes = partitions.principal_codes(nn._space.fitted.block, np.arange(len(X_train)),
                                             rng)
    approx = partitions.neighbor_graph(nn._space, 10, codes, 1, rng)
    found = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, expected)])
    assert found >= 0.9, found
    assert not np.any(approx == np.arange(len(X_train))[:, None])  # never itself


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
    # Probing by mass, such queries probe every cluster: their answer is exact.
    nn.search_params_ = {"probe_mass": 0.5}
    probes = nn.route(Q)
    assert np.all(np.sort(probes[:2], axis=1) == np.arange(25))
    ref = NearestNeighbors(n_neighbors=3).fit(X_train).kneighbors(Q[1:2])
    assert_array_equal(nn.kneighbors(Q[1:2])[1], ref[1])


def test_mlp_router_learns_where_neighbours_are(blobs):
    X_train, X_test = blobs
    nn = ClusterFilteredKNN(n_neighbors=10, n_clusters=25, n_probe=5, random_state=0,
                            **FAST_ROUTER).fit(X_train)
    ref_dist, _ = NearestNeighbors(n_neighbors=10).fit(X_train).kneighbors(X_test)
    assert recall_at_k(nn.kneighbors(X_test)[0], ref_dist) >= 0.9
    assert nn.n_iter_ >= 1 and len(nn.history_["loss"]) == nn.n_iter_


def test_router_targets_are_neighbour_cluster_shares(blobs):
    X_train, _ = blobs
    nn = ClusterFilteredKNN(n_clusters=25, router="centroid", random_state=0).fit(X_train)
    rows = np.arange(50)
    # Each row's neighbours, itself excluded; some rows have fewer (-1).
    ind = NearestNeighbors(n_neighbors=10).fit(X_train).kneighbors(return_distance=False)
    ind[3, 4:] = -1
    ind[7, :] = -1
    ids = neighbour_clusters(ind, rows, nn.labels_)
    assert_array_equal(ids, np.where(ind[rows] >= 0, nn.labels_[ind[rows]], -1))
    shares = np.zeros((len(rows), nn.n_clusters_), dtype=np.float32)
    for r in rows:
        valid = ind[r][ind[r] >= 0]
        for j in valid:
            shares[r, nn.labels_[j]] += 1.0 / len(valid)
    assert_allclose(cluster_shares(ids, nn.n_clusters_), shares, atol=1e-6)
    # The loss on the ids is the cross-entropy against those shares (0 for
    # a row without neighbours).
    keras = import_keras()
    logits = np.random.RandomState(0).normal(scale=3.0, size=shares.shape).astype(np.float32)
    dense = keras.losses.CategoricalCrossentropy(from_logits=True, reduction=None)(shares, logits)
    loss = keras.ops.convert_to_numpy(share_crossentropy(ids, keras.ops.convert_to_tensor(logits)))
    assert_allclose(loss, keras.ops.convert_to_numpy(dense), rtol=1e-5, atol=1e-6)
    assert loss[7] == 0.0


def test_router_stops_once_its_loss_improves_by_less_than_tol(blobs):
    X_train, _ = blobs
    params = dict(n_clusters=25, random_state=0, n_iter_no_change=1, **FAST_ROUTER)
    patient = ClusterFilteredKNN(tol=0.0, **params).fit(X_train)
    # The second epoch cannot improve by 100: it stops there, keeping the best.
    hasty = ClusterFilteredKNN(tol=100.0, **params).fit(X_train)
    assert hasty.n_iter_ == 2 < patient.n_iter_


def test_router_trains_alike_on_dense_shares_and_on_ids(blobs, monkeypatch):
    # Small problems train on dense shares (faster to compile), large ones on
    # the ids: the same loss, so the same router up to rounding.
    X_train, _ = blobs
    dense = ClusterFilteredKNN(n_clusters=25, random_state=0, **FAST_ROUTER).fit(X_train)
    monkeypatch.setattr(routing, "_DENSE_TARGETS_UP_TO", 0)
    ids = ClusterFilteredKNN(n_clusters=25, random_state=0, **FAST_ROUTER).fit(X_train)
    assert_allclose(ids.history_["loss"], dense.history_["loss"], rtol=1e-5)
    for (W1, b1, _), (W2, b2, _) in zip(ids._router.layers, dense._router.layers):
        assert_allclose(W1, W2, rtol=1e-4, atol=1e-5)
        assert_allclose(b1, b2, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def by_mass(blobs):
    X_train, _ = blobs
    return ClusterFilteredKNN(n_neighbors=10, n_clusters=25, random_state=0,
                              **FAST_ROUTER).fit(X_train)


def test_mass_probing_reaches_the_mass_and_no_more(by_mass, blobs):
    _, X_test = blobs
    nn = copy.copy(by_mass)
    assert nn.search_params_ == {"probe_mass": 0.9}
    P, lost = nn._router_proba(nn._space.rows(X_test).block)
    assert not lost.any()
    for mass in (0.3, 0.9, 0.99):
        nn.search_params_ = {"probe_mass": mass}
        probes = nn.route(X_test)
        for p, probs in zip(probes, P):
            chosen = p[p >= 0]
            assert len(set(chosen)) == len(chosen) and probs[chosen].sum() >= mass - 1e-6
            assert probs[chosen[:-1]].sum() < mass
            # Best probability per fitted point first.
            score = probs[chosen] / nn._sizes[chosen]
            assert np.all(np.diff(score) <= 0)
        sizes = np.where(probes >= 0, nn._sizes[np.maximum(probes, 0)], 0).sum(1).mean()
        assert nn.mean_candidates(X_test) == pytest.approx(sizes)


def test_recall_grows_with_probe_mass(by_mass, blobs):
    X_train, X_test = blobs
    ref_dist, ref_ind = NearestNeighbors(n_neighbors=10).fit(X_train).kneighbors(X_test)
    nn = copy.copy(by_mass)
    recalls = []
    for mass in (0.3, 0.6, 0.9, 0.99, 1.0):
        nn.search_params_ = {"probe_mass": mass}
        recalls.append(recall_at_k(nn.kneighbors(X_test)[0], ref_dist))
    assert recalls == sorted(recalls) and recalls[-1] == 1.0, recalls
    assert_array_equal(nn.kneighbors(X_test)[1], ref_ind)


def test_target_recall_picks_the_smallest_probe_mass(blobs):
    X_train, _ = blobs
    nn = ClusterFilteredKNN(n_neighbors=10, n_clusters=25, target_recall=0.97,
                            random_state=0, **FAST_ROUTER).fit(X_train)
    mass = nn.search_params_["probe_mass"]
    masses = [e["probe_mass"] for e in nn._search_efforts()]
    assert nn.recall_ >= 0.97 and mass in masses
    if masses.index(mass) > 0:
        smaller = ClusterFilteredKNN(n_neighbors=10, n_clusters=25, random_state=0,
                                     probe_mass=masses[masses.index(mass) - 1],
                                     **FAST_ROUTER).fit(X_train)
        assert smaller.recall_ < 0.97


@pytest.mark.parametrize("mass", [0.5, 0.95, 0.999])
def test_probe_order_kernel_matches_sorting(mass, rng):
    P = rng.dirichlet(np.full(40, 0.1), size=300)
    P[:5] = 1.0 / 40  # uniform: these need more clusters than the kernel's first pass
    sizes = rng.randint(1, 30, size=40)
    probes = probe_order(P, sizes, mass=mass)
    for p, probs in zip(probes, P):
        order = np.lexsort((np.arange(40), -probs / sizes))
        need = np.searchsorted(np.cumsum(probs[order]), mass) + 1
        expected = order[: min(need, 40)]
        assert_array_equal(p[: len(expected)], expected)
        assert np.all(p[len(expected):] == -1)
    # Weights scaled per query, with their sums: the same clusters (powers
    # of two, so that the uniform rows' exact ties stay exact).
    total = 2.0 ** rng.randint(-5, 6, size=300)
    assert_array_equal(probe_order(P * total[:, None], sizes, mass=mass, total=total),
                       probes)


def test_search_clusters_is_exact_within_the_clusters(by_mass, blobs):
    X_train, X_test = blobs
    nn = by_mass
    clusters = np.stack([np.arange(len(X_test)) % 25, (np.arange(len(X_test)) + 3) % 25,
                         np.full(len(X_test), -1), np.arange(len(X_test)) % 25], axis=1)
    dist, ind = nn.search_clusters(X_test, clusters, n_neighbors=4)
    for row, query in enumerate(X_test):
        rows = np.flatnonzero(np.isin(nn.labels_, clusters[row]))
        d = np.linalg.norm(X_train[rows] - query, axis=1)
        best = rows[np.argsort(d, kind="stable")[:4]]
        assert_array_equal(np.sort(ind[row]), np.sort(best))
        assert_allclose(dist[row], np.sort(d)[:4], rtol=1e-5)
    # The routes of kneighbors give its answer.
    assert_array_equal(nn.search_clusters(X_test, nn.route(X_test))[1], nn.kneighbors(X_test)[1])
    # Fewer rows than neighbours: -1 and inf.
    small = int(np.argmin(nn._sizes))
    dist, ind = nn.search_clusters(X_test[:2], [[small], [small]],
                                   n_neighbors=int(nn._sizes[small]) + 1)
    assert np.all(ind[:, -1] == -1) and np.all(np.isinf(dist[:, -1]))


@pytest.mark.parametrize("clusters, match", [
    (np.zeros((3, 2), dtype=int), "of shape"),
    (np.full((200, 2), 25), "integers in"),
    (np.full((200, 2), -2), "integers in"),
    (np.zeros((200, 2)), "integers in"),
    (np.zeros(200, dtype=int), "of shape"),
])
def test_search_clusters_checks_clusters(by_mass, blobs, clusters, match):
    with pytest.raises(ValueError, match=match):
        by_mass.search_clusters(blobs[1], clusters)


@pytest.mark.parametrize("params, match", [
    ({"probe_mass": 0.5, "router": "centroid"}, "probe_mass sets the effort of the 'mlp'"),
    ({"probe_mass": 0.5, "n_probe": 2}, "use n_probe alone"),
    ({"probe_mass": 0.0}, "probe_mass"),
    ({"probe_mass": 1.5}, "probe_mass"),
])
def test_bad_probe_mass(params, match, rng):
    with pytest.raises(ValueError, match=match):
        ClusterFilteredKNN(**params, **FAST_ROUTER).fit(rng.randn(40, 3))


@pytest.mark.parametrize("params", [{"probe_mass": 0}, {"probe_mass": 1.5}, {"probe_mass": True},
                                    {"probe_mass": 0.5, "n_probe": 2}])
def test_reassigned_probe_mass_is_checked(by_mass, blobs, params):
    nn = copy.copy(by_mass)
    nn.search_params_ = params
    with pytest.raises(ValueError, match=r"search_params_ must be a dict .*'probe_mass'"):
        nn.kneighbors(blobs[1])


def test_centroid_router_has_no_probe_mass(fitted, blobs):
    if fitted.router != "centroid":
        return
    nn = copy.copy(fitted)
    nn.search_params_ = {"probe_mass": 0.9}
    with pytest.raises(ValueError, match=r"keys \['n_probe'\] \(a positive integer"):
        nn.kneighbors(blobs[1])


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


def test_radius_beyond_the_probed_clusters_is_not_cut_off(fitted, blobs):
    # Every probed row within the radius: the ball may hold more, and the
    # query is searched in every cluster (2 probed clusters gave ~100 rows of
    # the 1,300 for an infinite radius).
    X_train, X_test = blobs
    nn = copy.copy(fitted)
    nn.search_params_ = {"n_probe": 2}
    far = float(np.ptp(X_train, axis=0).max() * np.sqrt(X_train.shape[1]))
    for radius in (np.inf, far):
        ind = nn.radius_neighbors(X_test[:20], radius=radius, return_distance=False)
        assert all(len(i) == len(X_train) for i in ind)


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


@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e20), (np.float64, 5e149),
                                          (np.float64, 1e-150)])
def test_learned_router_at_extreme_scales(dtype, scale, rng):
    # The rows of the metrics ranked by exact distances reach the PCA and the
    # router as given: their squares overflow (or underflow) there.
    X = (np.clip(rng.randn(300, 4), -3, 3) * scale).astype(dtype)
    Q = X[:20] * dtype(1.01)
    nn = ClusterFilteredKNN(5, metric="manhattan", n_clusters=6, random_state=0,
                            **FAST_ROUTER).fit(X)
    assert nn.n_iter_ >= 1 and 0.5 <= nn.recall_ <= 1.0
    ref = NearestNeighbors(n_neighbors=5, metric="manhattan").fit(X).kneighbors(Q)[1]
    nn.search_params_ = {"probe_mass": 1.0}
    assert_array_equal(nn.kneighbors(Q)[1], ref)
