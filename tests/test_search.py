"""The shared core: metric resolution and exact chunked search."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.spatial.distance import cdist
from sklearn import config_context
from sklearn.neighbors import NearestNeighbors

from skknn import ClusterFilteredKNN, LearnedNeighbors
from skknn import _search as search
from skknn._metrics import SUPPORTED_METRICS, Metric, Space, resolve_metric
from skknn._search import (
    candidate_radius,
    drop_self,
    exact_kneighbors,
    exact_radius,
    recall_at_k,
    rerank,
)

from ._assertions import assert_same_neighbors


@pytest.mark.parametrize(
    "metric, p, params, expected",
    [
        ("minkowski", 2, None, Metric("euclidean")),
        ("minkowski", 1, None, Metric("manhattan")),
        ("minkowski", np.inf, None, Metric("chebyshev")),
        ("minkowski", 3, None, Metric("minkowski", 3.0)),
        ("minkowski", 2, {"p": 1.5}, Metric("minkowski", 1.5)),
        ("cityblock", 2, None, Metric("manhattan")),
        ("l2", 2, None, Metric("euclidean")),
        ("cosine", 2, None, Metric("cosine")),
    ],
)
def test_resolve_metric(metric, p, params, expected):
    assert resolve_metric(metric, p, params) == expected


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"metric": "haversine"}, "Supported metrics are"),
        ({"metric": "minkowski", "p": 0.5}, "p >= 1"),
        ({"metric": "euclidean", "metric_params": {"w": 1}}, "not used by metric"),
        ({"metric": None}, "Supported metrics are"),
    ],
)
def test_resolve_metric_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_metric(**kwargs)


def make_space(metric, X, p=2):
    return Space(resolve_metric(metric, p), X)


@pytest.mark.parametrize("metric", sorted(set(SUPPORTED_METRICS) - {"minkowski"}))
def test_ranking_within_its_bound_and_paired_agree_with_scipy(metric, rng):
    A, B = rng.randn(7, 5), rng.randn(9, 5)
    scipy_name = {"l1": "cityblock", "manhattan": "cityblock", "l2": "euclidean",
                  "infinity": "chebyshev"}.get(metric, metric)
    expected = cdist(A, B, metric=scipy_name)
    space = make_space(metric, B)
    m = space.metric
    assert_allclose(m.paired(A[:, None, :], B[None, :, :]), expected, atol=1e-12)
    q, x = space.rows(A), space.fitted
    ranking = space.block_values(q, x.block, x.sq)
    exact_ranking = space.to_ranking(expected)
    if m.name == "cosine":
        exact_ranking = expected
    bound = space.error(q.sq[:, None], x.sq[None, :]) if m.is_dot_product else 1e-12
    assert np.all(np.abs(ranking - exact_ranking) <= bound)


def test_minkowski_paired(rng):
    m = Metric("minkowski", 3.0)
    A, B = rng.randn(4, 6), rng.randn(5, 6)
    assert_allclose(m.paired(A[:, None, :], B[None]), cdist(A, B, "minkowski", p=3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_self_distance_is_zero_at_pixel_scale(dtype, rng):
    # The expanded formula alone gives ~1e-6 (float64) or ~1 (float32) here.
    X = (rng.rand(300, 784) * 255).astype(dtype)
    space = make_space("euclidean", X)
    dist, ind = exact_kneighbors(space, space.fitted[:50], 3)
    assert_array_equal(ind[:, 0], np.arange(50))
    assert np.all(dist[:, 0] == 0.0)
    expected = np.sqrt(((X[:50, None, :].astype(np.float64) - X[ind]) ** 2).sum(-1))
    assert_allclose(dist, expected, rtol=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
def test_rows_stored_in_a_new_order_keep_their_forms_and_one_copy(metric, rng):
    X = rng.randn(50, 4) + 1e3
    space = make_space(metric, X)
    order = rng.permutation(50)
    expected = space.fitted.prepare()[order]
    space.permute(order)
    stored = space.fitted
    assert_array_equal(stored.data, X[order])
    assert_array_equal(stored.block, expected.block)
    if metric == "manhattan":  # the ranking rows are the data: one copy
        assert stored.block is stored.data
    else:
        assert_array_equal(stored.sq, expected.sq)
    assert_array_equal(space.fitted_rows(np.arange(5)).data, X[:5])
    assert_array_equal(space.to_ids(space.positions(np.arange(5))), np.arange(5))


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "manhattan"])
def test_reference_in_small_chunks_equals_sklearn(metric, rng, monkeypatch):
    # The recall reference on shifted float32 rows, with a chunk budget so
    # small that its fitted rows and its queries' pairs come in many chunks.
    X = (rng.randn(300, 6) + 1e4).astype(np.float32)
    space = make_space(metric, X)
    q = space.rows(X[:40] + np.float32(0.5))
    monkeypatch.setattr(search, "_MAX_CHUNK_BYTES", 4096)
    dist, ind = search.reference_kneighbors(space, q, 5)
    ref_dist, ref_ind = NearestNeighbors(n_neighbors=5, metric=metric).fit(
        X.astype(np.float64)).kneighbors(q.data.astype(np.float64))
    assert_allclose(dist, ref_dist, rtol=1e-9, atol=1e-12)
    # (Shifted float32 rows tie often: ties may come in another order.)
    assert_same_neighbors(dist, ind, ref_dist, ref_ind, scale=1e4)


@pytest.mark.parametrize("block_rows", [1, 3, 5, 40])
def test_top_k_merged_over_blocks_is_the_k_smallest_ties_by_row(block_rows, rng, monkeypatch):
    # Values with many ties, some inf and NaN (never listed: the inf / -1
    # pads win), merged over blocks of fitted rows: the k smallest of each
    # query by (value, row), whether a block is selected in or picked from.
    n_queries, n_rows, k = 30, 120, 4
    V = rng.randint(0, 8, size=(n_queries, n_rows)).astype(float)
    V[rng.rand(n_queries, n_rows) < 0.05] = np.inf
    V[rng.rand(n_queries, n_rows) < 0.05] = np.nan
    V[0, 3:] = np.inf  # fewer than k finite values
    monkeypatch.setattr(search, "_MAX_CHUNK_BYTES", 8 * (1 + 3 * n_queries) * block_rows)
    dist, ind = search._merge_over_rows(np.zeros((n_queries, 1)), n_rows, k,
                                        lambda rows: V[:, rows])
    for row, values in enumerate(V):
        finite = np.flatnonzero(np.isfinite(values))
        best = finite[np.lexsort((finite, values[finite]))][:k]
        missing = k - len(best)
        assert_array_equal(ind[row], np.r_[best, [-1] * missing])
        assert_array_equal(dist[row], np.r_[values[best], [np.inf] * missing])


@pytest.mark.parametrize("metric", ["euclidean", "manhattan", "chebyshev"])
def test_exact_search_keeps_the_lowest_rows_of_those_tied_at_the_kth(metric, rng):
    # Points on a small integer grid: most k-th distances are shared by
    # several rows; the exact search keeps the lowest of them, as do its
    # reference and the estimators' exact settings.
    X = rng.randint(0, 3, size=(200, 3)).astype(float)
    Q = rng.randint(0, 3, size=(50, 3)).astype(float)
    D = cdist(Q, X, metric={"manhattan": "cityblock"}.get(metric, metric))
    expected = np.array([np.lexsort((np.arange(len(X)), d))[:7] for d in D])
    space = make_space(metric, X)
    cf = ClusterFilteredKNN(n_neighbors=7, metric=metric, router="centroid", n_clusters=8,
                            random_state=0).fit(X)
    cf.search_params_ = {"n_probe": cf.n_clusters_}
    ln = LearnedNeighbors(n_neighbors=7, metric=metric, embedder="passthrough", backend="brute")
    for dist, ind in (search.exact_search(X, Q, 7, metric=metric),
                      search.reference_kneighbors(space, space.rows(Q), 7),
                      cf.kneighbors(Q), ln.fit(X).kneighbors(Q)):
        assert_array_equal(ind, expected)
        assert_allclose(dist, np.take_along_axis(D, expected, 1), rtol=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "manhattan", "cosine", "sqeuclidean"])
def test_chunked_search_equals_one_block(metric, rng):
    X, Q = rng.randn(400, 8), rng.randn(120, 8)
    space = make_space(metric, X)
    q = space.rows(Q)
    full = exact_kneighbors(space, q, 6)
    # A few kilobytes of working memory forces one query per chunk.
    with config_context(working_memory=0.01):
        chunked = exact_kneighbors(space, q, 6, n_jobs=2)
        radius = exact_radius(space, q, np.median(full[0]), n_jobs=2)
    assert_array_equal(full[1], chunked[1])
    assert_allclose(full[0], chunked[0])
    full_radius = exact_radius(space, q, np.median(full[0]))
    for a, b in zip(radius[1], full_radius[1]):
        assert_array_equal(a, b)


def test_exact_radius_is_inclusive_and_matches_sklearn(rng):
    X = rng.randint(0, 3, size=(60, 2)).astype(float)  # many equal distances
    space = make_space("euclidean", X)
    dist, ind = exact_radius(space, space.fitted, 1.0)
    nn = NearestNeighbors(radius=1.0, algorithm="brute").fit(X)
    ref_dist, ref_ind = nn.radius_neighbors(X)
    for d, i, ri in zip(dist, ind, ref_ind):
        assert_array_equal(np.sort(i), np.sort(ri))
        assert np.all(d <= 1.0)


def test_rerank_handles_missing_candidates(rng):
    X, Q = rng.randn(20, 3), rng.randn(2, 3)
    space = make_space("euclidean", X)
    cand = np.array([[3, 5, -1, 7], [-1, -1, -1, 2]])
    dist, ind = rerank(space, space.rows(Q), cand, 3)
    assert set(ind[0]) == {3, 5, 7}
    assert_array_equal(ind[1], [2, -1, -1])
    assert np.isinf(dist[1, 1:]).all()
    assert np.all(np.diff(dist[0]) >= 0)


def test_candidate_radius_returns_index_order(rng):
    X = rng.randn(30, 2)
    space = make_space("euclidean", X)
    cand = np.array([[9, 2, 5, -1, 1]])
    dist, ind = candidate_radius(space, space.fitted[:1], cand, 10.0)
    assert_array_equal(ind[0], [1, 2, 5, 9])
    assert_allclose(dist[0], np.linalg.norm(X[[1, 2, 5, 9]] - X[0], axis=1))


def test_drop_self():
    dist = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    ind = np.array([[0, 4, 2], [3, 4, 5]])
    d, i = drop_self(dist, ind, np.array([0, 1]))
    assert_array_equal(i, [[4, 2], [3, 4]])  # row 1: self absent, last dropped
    assert_array_equal(d, [[1.0, 2.0], [0.0, 0.0]])


def test_recall_counts_ties_as_found():
    exact = np.array([[1.0, 2.0, 2.0]])
    assert recall_at_k(np.array([[1.0, 2.0, 2.0]]), exact) == 1.0
    assert recall_at_k(np.array([[1.0, 2.0, 3.0]]), exact) == pytest.approx(2 / 3)
    assert recall_at_k(np.empty((0, 3)), np.empty((0, 3))) == 1.0
    # A k-th distance of exactly 0 that another exact computation rounds to a
    # tiny positive value is a tie, not a miss; the tolerance scales with the
    # data's distances, so a real miss stays a miss at any scale.
    exact = np.array([[0.0], [1.0]])
    assert recall_at_k(np.array([[1e-33], [1.0]]), exact) == 1.0
    for scale in (1e-14, 1.0, 1e14):
        assert recall_at_k(np.array([[1e-6], [1.0]]) * scale, exact * scale) == 0.5


def test_recall_of_float32_distances_against_a_float64_reference():
    # An exact float32 answer is rounded to float32: found, whichever array is
    # the float64 one; a distance beyond float32 rounding is still a miss.
    exact = np.sqrt(np.arange(1.0, 31.0)).reshape(3, 10) + 1e4
    assert recall_at_k(exact.astype(np.float32), exact) == 1.0
    assert recall_at_k(exact, exact.astype(np.float32)) == 1.0
    worse = exact.copy()
    worse[:, -1] *= 1 + 1e-5
    assert recall_at_k(worse.astype(np.float32), exact) == pytest.approx(0.9)


def test_recall_tolerance_is_not_widened_by_a_far_query():
    # One outlier query's k-th distance (4e8) must not make a near miss
    # (0.004 against 0.0035) of the other queries a tie.
    exact = np.array([[0.0030, 0.0035], [0.0030, 0.0035], [1e8, 4e8]])
    approx = np.array([[0.0030, 0.0040], [0.0030, 0.0035], [1e8, 4e8]])
    assert recall_at_k(approx, exact) == pytest.approx(5 / 6)


def test_recall_counts_rows_of_the_exact_answer_whatever_their_distances():
    # Two exact computations of one distance may differ beyond rtol (cosine
    # distances near 1e-20): a returned row of the exact answer is found; a
    # row outside it is found only by its distance; -1 (no row) never.
    exact_dist, exact_ind = np.array([[1.0, 2.0]]), np.array([[4, 7]])
    approx_dist = np.array([[1.0, 2.0 + 1e-6]])
    assert recall_at_k(approx_dist, exact_dist) == 0.5
    assert recall_at_k(approx_dist, exact_dist, approx_ind=np.array([[4, 7]]),
                       exact_ind=exact_ind) == 1.0
    assert recall_at_k(approx_dist, exact_dist, approx_ind=np.array([[4, 8]]),
                       exact_ind=exact_ind) == 0.5
    assert recall_at_k(np.array([[1.0, 5.0]]), exact_dist, approx_ind=np.array([[4, -1]]),
                       exact_ind=np.array([[4, -1]])) == 0.5


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine", "manhattan",
                                    "chebyshev", "minkowski"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_kernel_matches_paired_distances(metric, dtype, rng):
    from skknn._kernels import candidate_distances

    X = (rng.randn(200, 17) * 50 + 1e3).astype(dtype)
    X[5] = 0.0  # a zero row: cosine distance 1
    Q = (rng.randn(150, 17) * 50 + 1e3).astype(dtype)
    space = make_space(metric, X, p=3)
    cand = rng.randint(-1, 200, size=(150, 9))
    compiled = candidate_distances(space.metric, Q, X, cand, n_jobs=2)
    reference = space.metric.paired(Q[:, None, :], X[np.maximum(cand, 0)])
    valid = cand >= 0
    assert_allclose(compiled[valid], reference[valid], rtol=1e-12, atol=1e-12)
    assert np.isinf(compiled[~valid]).all()
    # Visiting the queries in another order changes nothing.
    visited = candidate_distances(space.metric, Q, X, cand, n_jobs=2, visit=rng.permutation(150))
    assert_array_equal(visited, compiled)


@pytest.mark.parametrize("metric, p, scale", [
    ("minkowski", 3, 2.0**400),  # the sums of cubes overflow
    ("minkowski", 3, 2.0**-400),  # ... underflow
    ("minkowski", 50, 2.0**-24),  # differences ~6e-8 to the power 50 underflow
    ("euclidean", 2, 2.0**-540),  # squares below float64's range
    ("sqeuclidean", 2, 2.0**-500),  # squares subnormal (summed again: the same)
])
def test_sums_of_powers_out_of_range_are_exact(metric, p, scale, rng):
    # Distances are homogeneous: at scale s they are s times those at 1 (s**2
    # for sqeuclidean), which float64 gives directly (powers of two: exact).
    from skknn._kernels import candidate_distances

    X, Q = rng.randn(40, 5), rng.randn(6, 5)
    m = resolve_metric(metric, p)
    unit = scale**2 if metric == "sqeuclidean" else scale
    expected = m.paired(Q[:, None, :], X[None]) * unit
    cand = np.broadcast_to(np.arange(40), (6, 40))
    routes = {"paired": m.paired(Q[:, None, :] * scale, X[None] * scale),
              "compiled": candidate_distances(m, Q * scale, X * scale, cand)}
    if not m.is_dot_product:
        routes["cdist"] = m.cdist(Q * scale, X * scale)
    for route, D in routes.items():
        assert_allclose(D, expected, rtol=1e-13, atol=0, err_msg=route)
    X[3] = Q[0]  # a distance of exactly 0 stays 0
    assert m.paired(Q[:1] * scale, X[3:4] * scale)[0] == 0.0


def test_reference_at_a_scale_below_float64_products(rng):
    # Rows ~1e-163: the float64 reference selected by products that underflow
    # (all ~0), which its relative bounds took as exact.
    X, Q = rng.randn(400, 8), rng.randn(30, 8)
    unit = make_space("euclidean", X)
    expected = search.reference_kneighbors(unit, unit.rows(Q), 5)
    scale = 2.0**-540
    space = make_space("euclidean", X * scale)
    dist, ind = search.reference_kneighbors(space, space.rows(Q * scale), 5)
    assert_array_equal(ind, expected[1])
    assert_allclose(dist, expected[0] * scale, rtol=1e-13)


_FRESH_PROCESS = """
import pickle, sys, numpy as np
import skknn._kernels as kernels
from skknn import LearnedNeighbors
X = np.random.RandomState(0).rand(300, 8)
if sys.argv[1] == "fit":
    nn = LearnedNeighbors(3, embedder="passthrough").fit(X)
    loaded = kernels._KERNEL is not None
else:
    nn = pickle.load(open(sys.argv[2], "rb"))
    threads = [t for t in __import__("threading").enumerate() if t.name == "skknn-kernel-load"]
    [t.join() for t in threads]
    loaded = bool(threads) and kernels._KERNEL is not None
print(loaded)
"""


def test_the_kernel_is_loaded_by_fit_and_by_unpickling(tmp_path):
    """No query pays for loading the re-ranking kernel, in a fresh process."""
    import pickle
    import subprocess
    import sys

    from skknn import LearnedNeighbors

    path = tmp_path / "nn.pkl"
    nn = LearnedNeighbors(3, embedder="passthrough").fit(np.random.RandomState(0).rand(50, 8))
    path.write_bytes(pickle.dumps(nn))
    for args in (["fit"], ["load", str(path)]):
        out = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, *args], capture_output=True,
                             text=True, check=True, timeout=300)
        assert out.stdout.strip() == "True", out.stderr


_CACHE_MISSES = """
import skknn._kernels as kernels
kernels.load()
print(sum(len(kernel.stats.cache_misses) for kernel in kernels._KERNEL))
"""


def test_a_second_process_loads_the_kernels_from_the_disk_cache():
    # numba keys a function's cache on its closure; a closure over other
    # compiled functions pickled differently in each process, so each one
    # compiled the kernels again (~8 s) and wrote another cache file.
    import subprocess
    import sys

    misses = [
        subprocess.run([sys.executable, "-c", _CACHE_MISSES], capture_output=True, text=True,
                       check=True, timeout=300).stdout.strip()
        for _ in range(2)
    ]
    assert misses[1] == "0", misses


@pytest.mark.parametrize("n_jobs", [1, 2, 3])
@pytest.mark.parametrize("n", [12, 70])  # a sorted list, a heap (_SORTED_UP_TO)
def test_cell_scans_keep_the_nearest_and_bound_the_rest(n_jobs, n, rng):
    from skknn._kernels import scan_cell_groups, scan_cells

    Z = rng.randn(600, 5).astype(np.float32)
    starts = np.array([0, 50, 50, 200, 260, 600])  # one cell empty
    z_sq = np.einsum("ij,ij->i", Z, Z)
    Q = rng.randn(300, 5).astype(np.float32)
    probes = np.stack([rng.permutation(5)[:3] for _ in range(300)])
    probes[::7, 2] = -1  # skipped
    for rows, values in (scan_cells(Q, Z, z_sq, starts, probes, n, n_jobs, return_values=True),
                         scan_cell_groups(Q, Z, z_sq, starts, probes, n, n_jobs)):
        for i in range(len(Q)):
            scanned = np.sort(np.concatenate([np.arange(starts[c], starts[c + 1])
                                              for c in probes[i] if c >= 0]))
            exact = z_sq[scanned] - 2.0 * (Z[scanned] @ Q[i])
            kept = rows[i][rows[i] >= 0]
            assert len(kept) == min(n, len(scanned)) and set(kept) <= set(scanned)
            assert_allclose(np.sort(values[i][rows[i] >= 0]),
                            np.sort(exact[np.searchsorted(scanned, kept)]), rtol=1e-5, atol=1e-5)
            # Every row left out ranks at least as far as the last kept.
            left = np.setdiff1d(scanned, kept)
            if len(left):
                left_values = exact[np.searchsorted(scanned, left)]
                assert left_values.min() >= values[i].max() - 1e-5


def test_ranking_rows_prepared_in_slices_equal_lazy_ones(rng):
    X = (rng.randn(300, 7) + 1e4).astype(np.float32)
    space = Space(resolve_metric("euclidean"), X)
    Q = (rng.randn(200, 7) + 1e4).astype(np.float32)
    lazy, prepared = space.rows(Q), space.rows(Q).prepare(n_jobs=2)
    assert_array_equal(prepared.block, lazy.block)
    assert_array_equal(prepared.sq, lazy.sq)
    assert_array_equal(prepared[10:20].block, lazy.block[10:20])


@pytest.mark.parametrize("scale", [1.0, 1e-20, 1e20])
def test_ranking_rows_are_numpys_float32_centring(scale, rng):
    """The compiled centring rounds each entry as NumPy's float32 arithmetic."""
    X = ((rng.randn(300, 37) + 1e4) * scale).astype(np.float32)
    space = Space(resolve_metric("euclidean"), X)
    Q = ((rng.randn(500, 37) + 1e4) * scale).astype(np.float32)
    rows = space.rows(Q).prepare(n_jobs=2)
    centre = space.centre.astype(np.float32)
    expected = (Q - centre) * np.float32(space.block_scale)
    assert_array_equal(rows.block, expected)
    assert_allclose(rows.sq, np.einsum("ij,ij->i", expected.astype(np.float64),
                                       expected.astype(np.float64)), rtol=1e-12)


def test_ranking_rows_of_an_overflowing_query_leave_the_others_alone(rng):
    """A query beyond float32 after centring gets inf; its neighbours keep
    their float32 rows (and exact search still answers every query)."""
    X = (rng.randn(300, 7) / 64 + 1e4).astype(np.float32)
    space = Space(resolve_metric("euclidean"), X)
    assert space.block_scale > 1  # so that Q[3] - centre overflows once scaled
    Q = (rng.randn(50, 7) / 64 + 1e4).astype(np.float32)
    Q[3] = 3e38
    rows = space.rows(Q).prepare()
    assert np.isinf(rows.sq[3]) and np.isfinite(np.delete(rows.sq, 3)).all()
    with np.errstate(over="ignore"):
        expected = (Q - space.centre.astype(np.float32)) * np.float32(space.block_scale)
    assert_array_equal(np.delete(rows.block, 3, axis=0), np.delete(expected, 3, axis=0))
    dist, _ = exact_kneighbors(space, space.rows(Q), 3)
    ref_dist, _ = NearestNeighbors(n_neighbors=3).fit(
        X.astype(np.float64)).kneighbors(Q.astype(np.float64))
    assert_allclose(dist, ref_dist, rtol=1e-12)


@pytest.mark.parametrize("n", [5, 70, 200])
def test_cell_scans_with_many_tied_rows(n, rng):
    """Rows with equal values (a sorted list's and a cut buffer's worst case)."""
    from skknn._kernels import scan_cells

    Z = rng.randn(3, 4).astype(np.float32)[rng.randint(0, 3, size=900)]
    starts = np.array([0, 300, 600, 900])
    z_sq = np.einsum("ij,ij->i", Z, Z)
    Q = rng.randn(50, 4).astype(np.float32)
    probes = np.tile([0, 1, 2], (50, 1))
    rows, values = scan_cells(Q, Z, z_sq, starts, probes, n, return_values=True)
    exact = z_sq[None, :] - 2.0 * (Q @ Z.T)
    for i in range(len(Q)):
        kept = rows[i][rows[i] >= 0]
        assert len(np.unique(kept)) == n
        # The n smallest values, whichever of the tied rows hold them.
        assert_allclose(np.sort(values[i]), np.sort(exact[i])[:n], rtol=1e-5, atol=1e-5)
        assert np.delete(exact[i], kept).min() >= values[i].max() - 1e-5


def _margin_rows(space, q, k):
    """The rows exact search keeps, by the margin rule in NumPy's float32."""
    alpha, beta = (-1.0, 0.0) if space.metric.name == "cosine" else (-2.0, 1.0)
    X, tol = space.fitted, space.tol
    with np.errstate(over="ignore", invalid="ignore"):
        H = alpha * (q.block @ X.block.T) + ((beta + tol) * X.sq).astype(np.float32)
        kth = np.partition(H, k - 1, axis=1)[:, k - 1].astype(np.float64)
        threshold = kth + 2 * tol * q.sq + 2 * space.ABS_SLACK
        selected = H - (2 * tol * X.sq).astype(np.float32) <= threshold[:, None]
    selected[~(q.sq <= search._RANKABLE_SQ)] = True
    return [set(np.flatnonzero(row)) for row in selected]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (5e3, 1e3), (1e6, 1.0), (0.0, 1e-20)])
def test_compiled_margin_keeps_the_rows_of_the_float32_rule(rng, metric, shift, scale):
    # The compiled k-th value and selection keep exactly the rows NumPy's
    # partition and comparison keep, with ties, for k in the sorted list
    # and beyond it (the cut buffer), and queries with more rows than fit.
    X = (rng.randn(1500, 16) * scale + shift).astype(np.float32)
    X[100:300] = X[0]
    Q = np.vstack([(rng.randn(60, 16) * scale + shift).astype(np.float32), X[:3]])
    space = Space(resolve_metric(metric), X)
    q = space.rows(Q)
    for k in (1, 5, 80):
        packed, loose = search._margin_candidates(space, q, k)
        kept = [set(row[row >= 0]) for row in packed]
        for row, cols in loose:
            kept[row] = set(cols)
        assert kept == _margin_rows(space, q, k), f"{metric}, k={k}"
        # Query 60 is X[0], with 201 tied rows: more than k=1 and 5 keep in
        # place (65 and 69 columns).
        assert k == 80 or 60 in {row for row, _ in loose}
