"""ShardedNeighbors on a real LocalCluster (worker processes): exactness, API, faults."""

import os
import re
import signal
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.pipeline import make_pipeline

from skknn import ClusterFilteredKNN, LearnedNeighbors, ShardedNeighbors, ShardLostError

from ._assertions import assert_same_neighbors, assert_same_radius, exact_problem
from .conftest import make_blobs_data
from .test_learned import METRICS, search_problems

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning",
    # Dask's own notices when workers are killed or clusters closed.
    "ignore::UserWarning:distributed",
    "ignore::RuntimeWarning:distributed",
)


def _cluster(n_workers=2):
    return distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                    dashboard_address=None)


@pytest.fixture(scope="module")
def client():
    with _cluster() as cluster, distributed.Client(cluster) as client:
        yield client


def exact_learned(**kwargs):
    return LearnedNeighbors(embedder="passthrough", backend="brute", **kwargs)


def exact_cluster(k, n_clusters=3, **kwargs):
    return ClusterFilteredKNN(k, router="centroid", partition="kmeans", n_clusters=n_clusters,
                              n_probe=n_clusters, random_state=0, **kwargs)


@pytest.mark.parametrize("metric, kwargs, ref_name", METRICS[::2])
@settings(max_examples=8)
@given(problem=search_problems(), query_is_train=st.booleans(), n_shards=st.integers(1, 4),
       cluster_filtered=st.booleans(), placement=st.sampled_from(["rows", "clusters"]))
def test_exact_settings_merge_to_brute_force(client, metric, kwargs, ref_name, problem,
                                             query_is_train, n_shards, cluster_filtered,
                                             placement):
    if (prepared := exact_problem(problem, metric, query_is_train)) is None:
        return
    X, Q, k = prepared
    n_shards = min(n_shards, len(X))
    if placement == "clusters":
        # Clusters of rows are placed whole: each shard needs distinct rows
        # (directions, for the cosine metric).
        rows = X / np.linalg.norm(X, axis=1, keepdims=True) if metric == "cosine" else X
        n_shards = min(n_shards, len(np.unique(rows, axis=0)) // 4)
        if n_shards < 1:
            return
    smallest_shard = len(X) // n_shards if placement == "rows" else 1
    estimator = (exact_cluster(k, min(3, smallest_shard), metric=metric, **kwargs)
                 if cluster_filtered
                 else exact_learned(n_neighbors=k, metric=metric, **kwargs))
    ours = ShardedNeighbors(estimator, n_shards=n_shards, placement=placement,
                            client=client).fit(X)
    if placement == "clusters":
        # The routing was chosen to keep 99.5% of the held-out neighbours;
        # probing every coarse centre visits every shard.
        assert ours.recall_ >= 0.995
        ours.coarse_probe_ = ours.n_coarse_centres_
    else:
        assert ours.recall_ == 1.0
    assert ours.n_shards_ == n_shards
    ref = NearestNeighbors(n_neighbors=k, algorithm="brute", metric=metric, **kwargs).fit(X)
    scale = np.linalg.norm(X if Q is None else np.vstack([X, Q]), axis=1).max()
    dist, ind = ours.kneighbors(Q)
    assert_same_neighbors(dist, ind, *ref.kneighbors(Q), scale=scale)
    radius = float(np.median(dist))
    r_dist, r_ind = ours.radius_neighbors(Q, radius=radius, sort_results=True)
    assert all(np.all(np.diff(d) >= 0) for d in r_dist)
    assert_same_radius(r_dist, r_ind, *ref.radius_neighbors(Q, radius=radius), radius, scale)


@pytest.mark.parametrize("placement", ["rows", "clusters"])
def test_ties_at_the_kth_keep_the_lowest_rows_over_shards(client, placement, rng):
    # Points on a small integer grid: most k-th distances are shared by
    # several rows. The exact settings, merged over shards, keep the lowest.
    X = rng.randint(0, 3, size=(400, 3)).astype(float)
    Q = rng.randint(0, 3, size=(50, 3)).astype(float)
    D = np.sqrt(((Q[:, None, :] - X[None, :, :]) ** 2).sum(axis=2))
    expected = np.array([np.lexsort((np.arange(len(X)), d))[:7] for d in D])
    for estimator in (exact_learned(n_neighbors=7), exact_cluster(7, 4)):
        ours = ShardedNeighbors(estimator, n_shards=2, placement=placement, client=client).fit(X)
        if placement == "clusters":
            ours.coarse_probe_ = ours.n_coarse_centres_
        assert_array_equal(ours.kneighbors(Q)[1], expected)


def test_scikit_learn_estimator_checks(client):
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(
        ShardedNeighbors(exact_learned()), on_fail=None,
        expected_failed_checks={
            "check_estimators_pickle": "fitted shards live on the workers (gather_shards)"},
    )
    failed = [(r["check_name"], r["exception"]) for r in results if r["status"] == "failed"]
    assert not failed
    assert sum(r["status"] == "passed" for r in results) >= 35


def test_fit_asks_the_scheduler_for_the_workers(client, rng, monkeypatch):
    """Client.scheduler_info() may return a copy without the workers, cached by
    a periodic refresh (distributed 2026.8): fit must not count them there."""
    monkeypatch.setattr(client, "scheduler_info", lambda *args, **kwargs: {"workers": {}})
    X = rng.randn(40, 3)
    ours = ShardedNeighbors(exact_learned(n_neighbors=2), client=client).fit(X)
    assert ours.n_shards_ == 2
    assert_array_equal(ours.kneighbors(X[:5], 1, return_distance=False).ravel(), np.arange(5))


def test_merge_breaks_ties_between_shards_by_global_row(rng):
    from skknn._shard_tasks import _merge_knn

    k = 4
    # Three shards holding interleaved rows (as placement='clusters' does),
    # each answer sorted by distance then row, with many equal distances;
    # some queries find fewer than k rows in a shard (inf, -1).
    rows = np.sort(rng.permutation(90).reshape(3, 30), axis=1)
    parts = []
    for _ in rows:
        dist = rng.randint(0, 3, (200, k)).astype(float)
        ind = rng.randint(0, 30, (200, k))
        dist[rng.rand(200) < 0.2, -1] = np.inf
        order = np.lexsort((ind, dist), axis=-1)
        dist, ind = np.take_along_axis(dist, order, 1), np.take_along_axis(ind, order, 1)
        ind[np.isinf(dist)] = -1
        parts.append((dist, ind))
    dist, ind = _merge_knn(parts, list(rows), k)

    all_dist = np.hstack([d for d, _ in parts])
    all_ind = np.hstack([np.where(i >= 0, r[i], -1) for (_, i), r in zip(parts, rows)])
    expected = np.lexsort((all_ind, all_dist), axis=-1)[:, :k]
    assert_array_equal(dist, np.take_along_axis(all_dist, expected, 1))
    assert_array_equal(ind, np.take_along_axis(all_ind, expected, 1))


@pytest.mark.parametrize("n", [1, 2, 3, 8, 9, 16])
def test_nearest_centres_are_the_smallest_in_order(rng, n):
    from skknn._placement import _smallest

    # Few distinct values (ties), and rows with an infinite or NaN distance.
    d = rng.randint(0, 6, (300, 16)).astype(float)
    d[:5, 3], d[5:8, :4], d[8, 7] = np.inf, np.inf, np.nan
    got = _smallest(d.copy(), n)
    assert got.shape == (300, n)
    assert all(len(set(row)) == n for row in got)
    # The n smallest of each row with finite distances, ascending.
    finite = np.isfinite(d).all(axis=1)
    assert_array_equal(np.take_along_axis(d, got, 1)[finite], np.sort(d[finite], axis=1)[:, :n])


def test_shards_hold_contiguous_rows_and_answer_with_global_rows(client, rng):
    X = rng.randn(403, 5)
    ours = ShardedNeighbors(exact_learned(n_neighbors=4), n_shards=3, client=client).fit(X)
    assert_array_equal(ours.shard_offsets_, [0, 135, 269, 403])
    shards = ours.gather_shards()
    assert [s.n_samples_fit_ for s in shards] == [135, 134, 134]
    assert_array_equal(shards[2]._space.fitted_rows(np.arange(134)).data, X[269:])
    # A query equal to a row of the last shard finds that row first.
    assert ours.kneighbors(X[[300, 5]], 1, return_distance=False).ravel().tolist() == [300, 5]


def test_clusters_placement_keeps_neighbourhoods_on_one_shard(client):
    # Well separated blobs: whole blobs go to each shard, and a query visits
    # only its blob's shard, at the recall fit measured.
    X = make_blobs_data(n_samples=2400, n_features=8, centers=12)
    Q = make_blobs_data(n_samples=2700, n_features=8, centers=12)[2400:]
    ours = ShardedNeighbors(exact_learned(n_neighbors=5, target_recall=0.99), n_shards=3,
                            placement="clusters", client=client).fit(X)
    assert ours.shard_offsets_ is None and ours.n_coarse_centres_ == 120
    assert sorted(np.concatenate(ours.shard_rows_).tolist()) == list(range(2400))
    assert all(350 <= len(rows) <= 1200 for rows in ours.shard_rows_)
    shards = ours.gather_shards()
    for shard, rows in zip(shards, ours.shard_rows_):
        assert_array_equal(shard._space.fitted_rows(np.arange(len(rows))).data, X[rows])
    visits = ours._router.visits(Q, ours.coarse_probe_)
    assert visits.sum(axis=1).mean() < 1.5
    assert ours.recall_ >= 0.99
    ref_dist, ref_ind = NearestNeighbors(n_neighbors=5).fit(X).kneighbors(Q)
    dist, ind = ours.kneighbors(Q)
    assert np.mean(dist <= ref_dist[:, -1:] * (1 + 1e-9)) >= 0.98
    # Answers are global rows, with exact distances.
    assert_allclose(dist, np.linalg.norm(Q[:, None] - X[ind], axis=2), rtol=1e-12)
    # The fitted rows, each not its own neighbour, come back in row order.
    own_dist, own_ind = ours.kneighbors()
    ref_own = NearestNeighbors(n_neighbors=5).fit(X).kneighbors()
    assert np.mean(own_ind == ref_own[1]) >= 0.98
    assert not np.any(own_ind == np.arange(2400)[:, None])
    # A shard searches only the queries routed to it (the task, run here).
    from skknn._shard_tasks import _knn_new

    rows = np.flatnonzero(visits[:, 0])
    d0, i0 = _knn_new(shards[0], (rows, Q[rows], len(Q)), 5, ours.search_params_[0])
    assert_array_equal(np.isfinite(d0).all(axis=1), visits[:, 0])
    assert np.all(i0[~visits[:, 0]] == -1) and 0 < visits[:, 0].sum() < len(Q)
    with pytest.raises(ValueError, match=r"coarse_probe_ must be an integer in \[1, "):
        ours.coarse_probe_ = 0
        ours.kneighbors(Q[:2])


def test_routed_queries_search_exactly_the_shards_they_visit(client):
    # Probing one coarse centre, each query visits one shard: NumPy queries
    # (routed in this process), a dask array's (routed by a task per chunk)
    # and the fitted rows (routed on their shard's worker) get the exact
    # neighbours among the rows of the shards they visit, none elsewhere.
    X = make_blobs_data(n_samples=900, n_features=4, centers=8, seed=3)
    Q = X[::9] + 0.05
    ours = ShardedNeighbors(exact_learned(n_neighbors=3, radius=1.0), n_shards=3,
                            placement="clusters", client=client).fit(X)
    ours.coarse_probe_ = 1
    visits = ours._router.visits(Q, 1)
    assert np.all(visits.sum(axis=1) == 1) and np.all(visits.any(axis=0))
    shard = visits.argmax(axis=1)
    rows = ours.shard_rows_
    want_dist, want_ind = np.empty((len(Q), 3)), np.empty((len(Q), 3), dtype=np.intp)
    want_radius = []
    for i, q in enumerate(Q):
        mine = rows[shard[i]]
        ref = NearestNeighbors(n_neighbors=3, radius=1.0).fit(X[mine])
        d, j = ref.kneighbors(q[None])
        want_dist[i], want_ind[i] = d[0], mine[j[0]]
        d, j = ref.radius_neighbors(q[None], sort_results=True)
        want_radius.append((d[0], mine[j[0]]))
    assert_same_neighbors(*ours.kneighbors(Q), want_dist, want_ind)
    lazy = ours.kneighbors(da.from_array(Q, chunks=(30, 4)))
    assert_same_neighbors(lazy[0].compute(), lazy[1].compute(), want_dist, want_ind)
    # One query: the shards it does not visit get no task.
    assert_same_neighbors(*ours.kneighbors(Q[:1]), want_dist[:1], want_ind[:1])
    for got_d, got_i in (ours.radius_neighbors(Q, sort_results=True),
                         [a.compute() for a in ours.radius_neighbors(
                             da.from_array(Q, chunks=(30, 4)), sort_results=True)]):
        for d, j, (w_d, w_j) in zip(got_d, got_i, want_radius):
            assert_array_equal(j, w_j)
            assert_allclose(d, w_d)
    # A fitted row's nearest centre is its shard's: it is searched there only.
    own_dist, own_ind = ours.kneighbors(n_neighbors=2)
    for mine in rows:
        ref = NearestNeighbors(n_neighbors=2).fit(X[mine]).kneighbors()
        assert_same_neighbors(own_dist[mine], own_ind[mine], ref[0], mine[ref[1]])


def test_a_ball_holding_the_shards_visited_is_searched_on_every_shard(client):
    # As ClusterFilteredKNN with its clusters: a query whose visited shards'
    # rows all lie within the radius may have more within it on the others,
    # and is searched on every shard; the others' balls stay cut off at the
    # shards they visit. NumPy queries, a dask array's, the fitted rows.
    X = make_blobs_data(n_samples=900, n_features=4, centers=8, seed=3)
    Q = X[::9] + 0.05
    ours = ShardedNeighbors(exact_learned(), n_shards=3, placement="clusters",
                            client=client).fit(X)
    ours.coarse_probe_ = 1
    shard_of = np.empty(len(X), dtype=np.intp)
    for i, mine in enumerate(ours.shard_rows_):
        shard_of[mine] = i
    visit = ours._router.visits(Q, 1).argmax(axis=1)
    own_visit = shard_of  # a fitted row visits its own shard
    dist_all = np.linalg.norm(Q[:, None] - X, axis=2)
    own_all = np.linalg.norm(X[:, None] - X, axis=2)
    np.fill_diagonal(own_all, np.inf)  # not its own neighbour
    reach = np.array([dist_all[i, shard_of == s].max() for i, s in enumerate(visit)])
    for radius in (np.inf, float(np.median(reach))):
        for got, d_all, visits in (
                (ours.radius_neighbors(Q, radius), dist_all, visit),
                ([a.compute() for a in ours.radius_neighbors(da.from_array(Q, chunks=(30, 4)),
                                                            radius)], dist_all, visit),
                (ours.radius_neighbors(radius=radius), own_all, own_visit)):
            again = 0
            for i, (d, j) in enumerate(zip(*got)):
                here, near = shard_of == visits[i], np.isfinite(d_all[i])
                whole = np.all(d_all[i, here & near] <= radius)
                again += whole
                want = np.flatnonzero((d_all[i] <= radius) & near & (here | whole))
                assert_array_equal(j, want)
                assert_allclose(d, d_all[i, want], rtol=1e-12)
            # Some queries of each kind searched again, some not (finite radius).
            assert again == len(visits) if radius == np.inf else 0 < again < len(visits)


def test_clusters_placement_from_a_dask_array_and_its_errors(client, rng, monkeypatch):
    X = make_blobs_data(n_samples=600, n_features=5, centers=6)
    Qd = da.from_array(X[:100] + 0.01, chunks=40)
    ours = ShardedNeighbors(exact_learned(n_neighbors=4), n_shards=2, placement="clusters",
                            client=client).fit(da.from_array(X, chunks=(130, 5)))
    ours.coarse_probe_ = ours.n_coarse_centres_
    ref = NearestNeighbors(n_neighbors=4).fit(X).kneighbors(X[:100] + 0.01)
    dist, ind = ours.kneighbors(Qd)
    assert_same_neighbors(dist.compute(), ind.compute(), *ref)
    r_dist, r_ind = ours.radius_neighbors(X[:50] + 0.01, radius=0.8)
    assert_same_radius(r_dist, r_ind,
                       *NearestNeighbors().fit(X).radius_neighbors(X[:50] + 0.01, radius=0.8),
                       0.8, np.abs(X).max())
    with pytest.raises(ValueError, match="needs at least n_shards=2 distinct rows"):
        ShardedNeighbors(exact_learned(n_neighbors=1), n_shards=2, placement="clusters",
                         client=client).fit(np.ones((30, 3)))
    monkeypatch.setitem(sys.modules, "pymetis", None)
    with pytest.raises(ImportError, match=r"placement='clusters' needs .*skknn\[graph\]"):
        ShardedNeighbors(exact_learned(), n_shards=2, placement="clusters",
                         client=client).fit(X)


def test_float32_dtype_graphs_and_transform(client, rng):
    X = rng.rand(200, 6).astype(np.float32)
    ours = ShardedNeighbors(exact_learned(n_neighbors=3, mode="distance"), n_shards=2,
                            client=client).fit(X)
    ref = NearestNeighbors(n_neighbors=3).fit(X)
    dist, ind = ours.kneighbors(X[:20])
    assert dist.dtype == np.float32 and ind.dtype == np.intp
    graph = ours.kneighbors_graph(X[:20], mode="distance")
    assert graph.shape == (20, 200)
    assert_allclose(graph.toarray(), ref.kneighbors_graph(X[:20], mode="distance").toarray(),
                    atol=1e-6)
    # transform: n_neighbors + 1 per row in 'distance' mode, as KNeighborsTransformer.
    assert ours.transform(X[:5]).nnz == 5 * 4
    assert ours.fit_transform(X).shape == (200, 200)
    assert_array_equal(ours.radius_neighbors_graph(X[:5], radius=0.3).toarray(),
                       ref.radius_neighbors_graph(X[:5], radius=0.3).toarray())
    # Lazy graphs declare the dtype their blocks have (float32 distances).
    Xd = da.from_array(X[:20], chunks=10)
    for lazy in (ours.kneighbors_graph(Xd, mode="distance"),
                 ours.radius_neighbors_graph(Xd, radius=0.3, mode="distance")):
        assert lazy.dtype == np.float32 == lazy.compute().dtype


def test_dask_array_fit_and_lazy_dask_queries(client, rng):
    X, Q = rng.randn(500, 8), rng.randn(300, 8)
    Xd = da.from_array(X, chunks=(70, 4))
    Qd = da.from_array(Q, chunks=(64, 8))
    ours = ShardedNeighbors(exact_learned(n_neighbors=5), n_shards=3, client=client).fit(Xd)
    assert ours.n_features_in_ == 8 and ours.n_samples_fit_ == 500
    dist, ind = ours.kneighbors(Qd)
    assert isinstance(dist, da.Array) and isinstance(ind, da.Array)
    assert ind.shape == (300, 5) and ind.chunks[0] == Qd.chunks[0]
    ref_dist, ref_ind = NearestNeighbors(n_neighbors=5).fit(X).kneighbors(Q)
    assert_same_neighbors(dist.compute(), ind.compute(), ref_dist, ref_ind)
    np_dist, np_ind = ours.kneighbors(Q)
    assert_array_equal(np_ind, ind.compute())
    with pytest.raises(ValueError, match="expecting 8 features"):
        ours.kneighbors(da.zeros((5, 3), chunks=5))
    # Integer queries are cast as NumPy ones are; bad dask arrays are refused
    # before any task runs, as check_array refuses NumPy ones.
    Qi = (Q[:40] * 10).astype(int)
    assert_array_equal(ours.kneighbors(da.from_array(Qi, chunks=16))[1].compute(),
                       ours.kneighbors(Qi)[1])
    for bad, message in [(Qd + 1j, "Complex data not supported"),
                         (Qd[:0], "0 sample"), (Qd[0], "Expected a 2D dask array")]:
        with pytest.raises(ValueError, match=message):
            ours.kneighbors(bad)
    for bad, message in [(Xd + 1j, "Complex data not supported"),  # not its real part
                         (Xd[:0], "0 sample"), (Xd[:, :0], "0 feature")]:
        with pytest.raises(ValueError, match=message):
            ShardedNeighbors(exact_learned(), n_shards=1, client=client).fit(bad)


@pytest.mark.parametrize("placement", ["rows", "clusters"])
def test_lazy_graphs_and_radius_queries_from_a_dask_array(client, rng, placement):
    # Graphs (dask arrays of CSR blocks) and radius answers (dask arrays of
    # object arrays), chunk by chunk, equal the NumPy answers; all shards
    # visited, they equal scikit-learn's.
    X, Q = rng.randn(400, 6), rng.randn(150, 6)
    Qd = da.from_array(Q, chunks=(64, 3))
    ours = ShardedNeighbors(exact_learned(n_neighbors=4, radius=2.0), n_shards=3,
                            placement=placement, client=client).fit(X)
    if placement == "clusters":
        ours.coarse_probe_ = ours.n_coarse_centres_
    ref = NearestNeighbors(n_neighbors=4, radius=2.0).fit(X)
    for mode in ("connectivity", "distance"):
        lazy = ours.kneighbors_graph(Qd, mode=mode)
        assert isinstance(lazy, da.Array) and lazy.chunks[0] == Qd.chunks[0]
        assert lazy.dtype == ours.kneighbors_graph(Q[:3], mode=mode).dtype
        assert_allclose(lazy.compute().toarray(), ref.kneighbors_graph(Q, mode=mode).toarray())
        lazy = ours.radius_neighbors_graph(Qd, mode=mode)
        assert isinstance(lazy, da.Array) and lazy.shape == (150, 400)
        assert_allclose(lazy.compute().toarray(),
                        ref.radius_neighbors_graph(Q, mode=mode).toarray())
    transformed = ours.set_params(estimator__mode="distance").transform(Qd)
    assert_allclose(transformed.compute().toarray(),
                    ours.transform(Q).toarray())
    dist, ind = ours.radius_neighbors(Qd, sort_results=True)
    assert isinstance(dist, da.Array) and dist.dtype == object and dist.chunks == Qd.chunks[:1]
    np_dist, np_ind = ours.radius_neighbors(Q, sort_results=True)
    ref_dist, ref_ind = ref.radius_neighbors(Q, sort_results=True)
    assert any(len(row) > 1 for row in ref_ind) and any(len(row) == 0 for row in ref_ind)
    for got_d, got_i, want_d, want_i, exp_d, exp_i in zip(dist.compute(), ind.compute(),
                                                            np_dist, np_ind, ref_dist, ref_ind):
        assert_array_equal(got_i, want_i)
        assert_array_equal(got_d, want_d)
        assert_array_equal(got_i, exp_i)
        assert_allclose(got_d, exp_d)
    unsorted = ours.radius_neighbors(Qd, return_distance=False)
    assert all(np.array_equal(got, np.sort(want))
               for got, want in zip(unsorted.compute(), ref_ind))
    with pytest.raises(ValueError, match="expecting 6 features"):
        ours.radius_neighbors(da.zeros((5, 3), chunks=5))
    with pytest.raises(ValueError, match="Unsupported mode"):
        ours.kneighbors_graph(Qd, mode="weights")


def test_replicas_share_the_queries(client, rng):
    # One shard on both workers: chunks of queries take turns over the two
    # copies (NumPy and dask queries), and the answer stays exact.
    X, Q = rng.randn(300, 4), rng.randn(1000, 4)
    ours = ShardedNeighbors(exact_learned(n_neighbors=3), n_shards=1, replicas=2,
                            client=client).fit(X)
    ref = NearestNeighbors(n_neighbors=3).fit(X).kneighbors(Q)
    for queries in (Q, da.from_array(Q, chunks=250)):
        with distributed.get_task_stream(client=client) as stream:
            dist, ind = ours.kneighbors(queries)
            dist, ind = np.asarray(dist), np.asarray(ind)
        assert_same_neighbors(dist, ind, *ref)
        searched_on = {t["worker"] for t in stream.data if "knn_new" in str(t["key"])}
        assert len(searched_on) == 2, stream.data


def _copies_together(client, rng):
    """One shard, two copies, both on one worker: as Dask's recovery of a
    lost copy may leave them (one object there). Returns the fitted rows,
    the estimator, that worker and the second copy."""
    from skknn._fan_out import submit_copy

    X = rng.randn(60, 3)
    ours = ShardedNeighbors(exact_learned(n_neighbors=2), n_shards=1, replicas=2,
                            client=client).fit(X)
    first = ours._shards[0][0]
    holder = next(iter(client.who_has(first)[first.key]))
    ours._shards[0][1] = together = submit_copy(client, ours._copy_prefixes[0], "lost", None,
                                                None, holder)
    distributed.wait(together)
    return X, ours, holder, together


def test_copies_brought_onto_one_worker_are_spread_again(client, rng):
    X, ours, holder, together = _copies_together(client, rng)
    assert set(client.who_has(together)[together.key]) == {holder}
    assert_array_equal(ours.kneighbors(X[:3])[1],
                       NearestNeighbors(n_neighbors=2).fit(X).kneighbors(X[:3])[1])
    second = ours._shards[0][1]
    assert second.key != together.key
    assert set(client.who_has(second)[second.key]) == set(client.nthreads()) - {holder}


def test_a_copy_lost_before_this_client_is_told_is_waited_for(client, rng, monkeypatch):
    # The scheduler's answer to who_has may come before its message that a
    # copy was lost: the copy then reads 'finished' and no worker holds it.
    # It is looked at again, not left out of the check (Dask would recover
    # it anywhere, perhaps beside the other copy).
    X, ours, _, together = _copies_together(client, rng)
    real, calls = client.who_has, []

    def news_late(futures):
        where = dict(real(futures))
        calls.append(len(calls))
        if len(calls) == 1:
            where[together.key] = ()
        return where

    monkeypatch.setattr(client, "who_has", news_late)
    ours.kneighbors(X[:3])
    monkeypatch.undo()
    held = [set(w) for w in client.who_has(ours._shards[0]).values()]
    assert len(held) == 2 and not held[0] & held[1], held


def test_a_copy_also_held_beside_another_is_made_again_apart(rng):
    # A lazy task that ran away from a copy leaves it on two workers, one of
    # them holding the shard's other copy; Dask's memory manager later keeps
    # one replica, perhaps that one. (Its periodic run is off here, so that
    # the overlap stays until the next query's check.)
    import dask

    X = rng.randn(60, 3)
    with dask.config.set({"distributed.scheduler.active-memory-manager.start": False}), \
            _cluster(3) as cluster, distributed.Client(cluster) as client:
        ours = ShardedNeighbors(exact_learned(n_neighbors=2), n_shards=1, replicas=2,
                                client=client).fit(X)
        first, second = ours._shards[0]
        where = client.who_has([first, second])
        client.replicate(second, workers=list(where[first.key]) + list(where[second.key]))
        assert set(client.who_has(second)[second.key]) >= set(where[first.key])
        ours.kneighbors(X[:3])
        held = [set(w) for w in client.who_has(ours._shards[0]).values()]
        assert len(held) == 2 and not held[0] & held[1], held


@pytest.mark.parametrize("replicated", [0, 1])
def test_a_copy_on_both_workers_is_made_again_on_one(rng, replicated):
    # Two workers, nowhere free: a copy held on both (a lazy task ran away
    # with it) is made again on the one not holding the other copy; else
    # Dask's memory manager may keep the replica beside the other copy.
    import dask

    X = rng.randn(60, 3)
    with dask.config.set({"distributed.scheduler.active-memory-manager.start": False}), \
            _cluster(2) as cluster, distributed.Client(cluster) as client:
        ours = ShardedNeighbors(exact_learned(n_neighbors=2), n_shards=1, replicas=2,
                                client=client).fit(X)
        copy = ours._shards[0][replicated]
        client.replicate(copy, workers=list(client.nthreads()))
        assert len(client.who_has(copy)[copy.key]) == 2
        dist, ind = ours.kneighbors(X[:3])
        held = [set(w) for w in client.who_has(ours._shards[0]).values()]
        assert len(held) == 2 and [len(h) for h in held] == [1, 1] and held[0] != held[1], held
        assert_same_neighbors(dist, ind, *NearestNeighbors(n_neighbors=2).fit(X).kneighbors(X[:3]))


def test_recall_and_target_recall_hold_across_shards(client):
    X = make_blobs_data(n_samples=3000, n_features=16, centers=30)
    Q = make_blobs_data(n_samples=3300, n_features=16, centers=30)[3000:]
    estimator = ClusterFilteredKNN(10, router="centroid", n_clusters=24, target_recall=0.9,
                                   random_state=0)
    ours = ShardedNeighbors(estimator, n_shards=2, client=client).fit(X)
    assert ours.recall_ >= 0.9
    assert len(ours.search_params_) == 2
    assert all(set(p) == {"n_probe"} for p in ours.search_params_)
    # The measured recall is that of the merged answer on new points too.
    dist = ours.kneighbors(Q)[0]
    ref = NearestNeighbors(n_neighbors=10).fit(X).kneighbors(Q)[0]
    true_recall = np.mean(dist <= ref[:, -1:] * (1 + 1e-9))
    assert abs(true_recall - ours.recall_) < 0.05
    # Each shard alone would be measured on its own rows; the shards were
    # fitted without target_recall: the merged answer chose the effort.
    assert [s.target_recall for s in ours.gather_shards()] == [None, None]


def test_clone_params_pipeline_and_n_neighbors_errors(client, rng):
    X = rng.randn(120, 4)
    y = (X[:, 0] > 0).astype(int)
    sharded = ShardedNeighbors(exact_learned(n_neighbors=5, mode="distance"), n_shards=2,
                               client=client)
    copy = clone(sharded)
    assert copy.client is client and copy.estimator is not sharded.estimator
    copy.set_params(estimator__n_neighbors=3)
    assert copy.n_neighbors == 3 and sharded.n_neighbors == 5
    pipe = make_pipeline(sharded, KNeighborsClassifier(n_neighbors=5, metric="precomputed"))
    ref = make_pipeline(exact_learned(n_neighbors=5, mode="distance"),
                        KNeighborsClassifier(n_neighbors=5, metric="precomputed"))
    assert_array_equal(pipe.fit(X, y).predict(X[:30]), ref.fit(X, y).predict(X[:30]))
    fitted = pipe[0]
    with pytest.raises(ValueError, match="Expected n_neighbors <= n_samples_fit"):
        fitted.kneighbors(X[:2], n_neighbors=121)
    with pytest.raises(ValueError, match="Expected n_neighbors < n_samples_fit"):
        fitted.kneighbors(n_neighbors=120)
    with pytest.raises(ValueError, match="expecting 4 features"):
        fitted.kneighbors(rng.randn(2, 3))
    with pytest.raises(ValueError, match="list of 2 dicts"):
        fitted.search_params_ = {}
        fitted.kneighbors(X[:2])


def test_bad_setups_give_clear_errors(client, rng, monkeypatch):
    X = rng.randn(10, 3)
    with pytest.raises(ValueError, match=r"n_shards=11 is more than .* \(n_samples=10\)"):
        ShardedNeighbors(exact_learned(), n_shards=11, client=client).fit(X)
    with pytest.raises(ValueError, match="replicas=3 needs as many workers.*has 2"):
        ShardedNeighbors(exact_learned(), replicas=3, client=client).fit(X)
    with pytest.raises(TypeError, match="skknn search estimator"):
        ShardedNeighbors(NearestNeighbors(), client=client).fit(X)
    with pytest.raises(TypeError, match="distributed.Client or None"):
        ShardedNeighbors(exact_learned(), client="tcp://nowhere").fit(X)
    with pytest.raises(ValueError, match="NaN"):
        ShardedNeighbors(exact_learned(), client=client).fit(X * np.nan)
    fitted = ShardedNeighbors(exact_learned(n_neighbors=2), client=client).fit(X)
    with pytest.raises(TypeError, match="gather_shards"):
        import pickle

        pickle.dumps(fitted)
    # Without a default client, the error says how to get one.
    monkeypatch.setattr(distributed, "get_client", _no_client)
    with pytest.raises(ValueError, match="needs a Dask client"):
        ShardedNeighbors(exact_learned()).fit(X)


def _no_client():
    raise ValueError("No global client found")


def test_the_cluster_leaves_this_process_searching_with_every_core(client):
    from joblib import cpu_count

    from skknn import _search

    if _search._OMP_NUM_THREADS is not None:
        pytest.skip("OMP_NUM_THREADS was set for this test run")
    # The LocalCluster's nannies set it in this process too...
    assert os.environ.get("OMP_NUM_THREADS") == "1"
    # ... which does not cut this process's searches to one thread.
    assert _search.search_threads(None) == cpu_count()


def test_missing_dask_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install 'skknn\[dask\]'"):
        ShardedNeighbors(exact_learned()).fit(np.zeros((4, 2)))


def test_failed_fit_leaves_the_estimator_as_before(client, rng):
    X = rng.randn(50, 3)
    ours = ShardedNeighbors(exact_learned(n_neighbors=2), n_shards=2, client=client).fit(X)
    before = ours.kneighbors(X[:5])
    with pytest.raises(ValueError, match="n_neighbors"):
        # Refused by each shard's fit, on the workers.
        ours.set_params(estimator__n_neighbors=0).fit(rng.randn(80, 3))
    ours.set_params(estimator__n_neighbors=2)
    assert ours.n_samples_fit_ == 50
    assert_array_equal(ours.kneighbors(X[:5])[1], before[1])


def _slowly(Q, rows=20, pause=0.03):
    """``Q`` as a dask array of chunks that take ``pause`` seconds each to
    make, so that a lazy query on it is still running when a worker is
    killed (time.sleep and getitem reach the workers by reference)."""
    import operator

    import dask

    return da.concatenate([
        da.from_delayed(dask.delayed(operator.getitem)(
            (dask.delayed(time.sleep, pure=False)(pause), Q[s:s + rows]), 1),
            Q[s:s + rows].shape, Q.dtype)
        for s in range(0, len(Q), rows)])


def _kill_holder_during_query(client, ours, Q, monkeypatch, lazy=False, every_worker=False):
    """Query in a thread (NumPy, or ``lazy``: a dask array computed) and kill
    the worker holding shard 0's first copy once it runs (or every worker)."""
    import dask

    import skknn._fan_out as fan_out

    monkeypatch.setattr(fan_out, "_CHUNK_BYTES", 8 * Q.shape[1] * 20)  # many chunks
    result = {}

    def query():
        try:
            result["answer"] = dask.compute(*ours.kneighbors(_slowly(Q))) if lazy \
                else ours.kneighbors(Q)
        except Exception as exc:  # noqa: BLE001 - reported to the test thread
            result["error"] = exc

    thread = threading.Thread(target=query)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive(), "the query ended before the worker was killed"
    holder = next(iter(client.who_has(ours._shards[0][0])[ours._shards[0][0].key]))
    pids = client.run(os.getpid)
    killed = list(pids) if every_worker else [holder]
    for worker in killed:
        os.kill(pids[worker], signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    # The query may end before the scheduler has seen the loss (the next
    # query's check of the copies then could not see it either).
    deadline = time.monotonic() + 60
    while set(killed) & set(client.scheduler_info(n_workers=-1)["workers"]):
        assert time.monotonic() < deadline, "the scheduler never saw the workers' loss"
        time.sleep(0.05)
    return result


def test_a_worker_killed_mid_query_is_survived_with_replicas(rng, monkeypatch):
    # Clusters placed on shards: the router sent to the workers must survive
    # too. A NumPy query's chunks are retried on the copies left; a lazy
    # query's tasks wait for Dask to copy the lost copy again from the one
    # left. Two kills: the first lost copy was recovered.
    X, Q = rng.randn(400, 6), rng.randn(3000, 6)
    ref = NearestNeighbors(n_neighbors=3).fit(X).kneighbors(Q)
    with _cluster(3) as cluster, distributed.Client(cluster) as client:
        ours = ShardedNeighbors(exact_learned(n_neighbors=3), n_shards=2, replicas=2,
                                placement="clusters", client=client).fit(X)
        ours.coarse_probe_ = ours.n_coarse_centres_
        for lazy in (False, True):
            result = _kill_holder_during_query(client, ours, Q, monkeypatch, lazy)
            assert "error" not in result, result.get("error")
            assert_same_neighbors(*result["answer"], *ref)
            # Dask may have recovered the lost copy on the worker of the
            # shard's other copy; the next query first makes it again on a
            # worker holding none of the shard, else a second loss would
            # take both. (Checked once the killed worker's nanny has started
            # it again, as the docs describe the recovery.)
            client.wait_for_workers(3, timeout=60)
            ours.kneighbors(Q[:5])
            where = client.who_has([copy for copies in ours._shards for copy in copies])
            for copies in ours._shards:
                assert len(copies) == 2
                assert len(set().union(*(where[copy.key] for copy in copies))) >= 2


@pytest.mark.parametrize("lazy", [False, True])
def test_a_lost_shard_without_replica_raises_and_returns_nothing(rng, monkeypatch, lazy):
    X, Q = rng.randn(400, 6), rng.randn(3000, 6)
    with _cluster(2) as cluster, distributed.Client(cluster) as client:
        ours = ShardedNeighbors(exact_learned(n_neighbors=3), n_shards=2, client=client).fit(X)
        holders = client.who_has([shard[0] for shard in ours._shards])
        assert len({tuple(w) for w in holders.values()}) == 2  # one shard per worker
        # Every worker: a lazy query's task may run where the shard is not,
        # and Dask then copies it there (a small shard). The recoveries must
        # then run on the workers that replace them, not wait for ever.
        result = _kill_holder_during_query(client, ours, Q, monkeypatch, lazy,
                                           every_worker=True)
        assert "answer" not in result
        assert isinstance(result["error"], ShardLostError)
        assert re.search(r"Shard [01] \(fitted rows (0 to 199|200 to 399)\) was lost",
                         str(result["error"]))
        with pytest.raises(ShardLostError, match="replicas=2"):
            ours.kneighbors(Q[:3])


def test_a_lost_shard_fitted_from_a_dask_array_is_fitted_again(rng, monkeypatch):
    # No replica: Dask fits the shard again from the array's chunks, and the
    # lazy query it was lost in completes.
    X, Q = rng.randn(400, 6), rng.randn(3000, 6)
    with _cluster(2) as cluster, distributed.Client(cluster) as client:
        ours = ShardedNeighbors(exact_learned(n_neighbors=3), n_shards=2, client=client)
        ours.fit(da.from_array(X, chunks=100))
        result = _kill_holder_during_query(client, ours, Q, monkeypatch, lazy=True)
    assert "error" not in result, result.get("error")
    assert_same_neighbors(*result["answer"], *NearestNeighbors(n_neighbors=3).fit(X).kneighbors(Q))


def test_grid_search_with_the_dask_backend_and_one_time_worker_setup(client):
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV

    from skknn import setup_dask_workers

    took = setup_dask_workers(client)
    assert set(took) == set(client.nthreads())
    assert all(set(parts) == {"keras", "kernels"} for parts in took.values())
    # Once per worker process: registering again does not warm up again.
    assert setup_dask_workers(client) == took
    flags = client.run(lambda: os.environ.get("XLA_FLAGS", ""))
    assert all("intra_op_parallelism_threads=1" in f for f in flags.values())
    # The nanny's malloc trim threshold is lifted where glibc takes mallopt.
    kept = client.run(lambda dask_worker: dask_worker.skknn_keeps_freed_memory)
    glibc = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION")
    assert all(kept.values()) if glibc else not any(kept.values())
    with pytest.raises(ValueError, match="warm_up takes parts among"):
        setup_dask_workers(client, warm_up=("tensorflow",))

    X, y = load_digits(return_X_y=True)
    X, y = X[:300], y[:300]
    router = ClusterFilteredKNN(mode="distance", n_clusters=4, partition="kmeans", epochs=2,
                                probe_mass=1.0, random_state=0)
    pipe = make_pipeline(router, KNeighborsClassifier(n_neighbors=3, metric="precomputed"))
    grid = {"clusterfilteredknn__n_neighbors": [3, 6]}
    search = GridSearchCV(pipe, grid, cv=2)
    with joblib.parallel_backend("dask"):
        search.fit(X, y)
    ref = GridSearchCV(pipe, grid, cv=2).fit(X, y)
    assert_allclose(search.cv_results_["mean_test_score"], ref.cv_results_["mean_test_score"])


def _thread_cpus():
    return {tuple(sorted(os.sched_getaffinity(int(task))))
            for task in os.listdir("/proc/self/task")}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs sched_setaffinity and two CPUs")
def test_worker_setup_gives_jax_one_thread_per_task_and_every_thread_all_cpus():
    from skknn import setup_dask_workers

    with _cluster(1) as cluster, distributed.Client(cluster) as client:
        setup_dask_workers(client, warm_up=("kernels",))
        assert list(client.run(lambda dask_worker: dask_worker.skknn_jax_threads).values()) \
            == [1]
        # No thread is left on the one CPU the JAX client was started on.
        cpus = tuple(sorted(os.sched_getaffinity(0)))
        assert list(client.run(_thread_cpus).values()) == [{cpus}]
