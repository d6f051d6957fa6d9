"""No silent wrong answers: offsets, scales, honest recall_, atomic fit, input forms."""

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from scipy import sparse
from scipy.spatial.distance import cdist
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.neighbors import NearestNeighbors

from skknn import AutoencoderEmbedder, ClusterFilteredKNN, LearnedNeighbors, TripletEmbedder

from .conftest import FAST_AE

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SCIPY_NAMES = {"euclidean": "euclidean", "sqeuclidean": "sqeuclidean", "manhattan": "cityblock",
               "cosine": "cosine", "chebyshev": "chebyshev", "minkowski": "minkowski"}


def brute_force64(X, Q, k, metric, **kwargs):
    """Float64 brute force from differences (scipy), ties by index; self excluded if Q is None."""
    X64 = np.asarray(X, dtype=np.float64)
    Q64 = X64 if Q is None else np.asarray(Q, dtype=np.float64)
    D = cdist(Q64, X64, metric=SCIPY_NAMES[metric], **kwargs)
    if Q is None:
        np.fill_diagonal(D, np.inf)
    ind = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, ind, axis=1), ind


def assert_exact(dist, ind, ref_dist, ref_ind, rtol, names):
    """Scale-free: distances within rtol; indices equal except among tied distances."""
    msg = f"{names[0]} and {names[1]} disagree"
    assert_allclose(dist, ref_dist, rtol=rtol, atol=0, err_msg=msg)
    for row in range(len(ind)):
        d, kth = ref_dist[row], ref_dist[row, -1]
        below = d < kth - rtol * abs(kth)  # strictly closer than the k-th: no ties there
        assert set(ind[row][dist[row] < kth - rtol * abs(kth)]) == set(ref_ind[row][below]), (
            f"{msg} on row {row}"
        )


def exact_estimators(k, metric):
    return [
        LearnedNeighbors(k, embedder="passthrough", backend="brute", metric=metric),
        ClusterFilteredKNN(k, router="centroid", n_clusters=3, n_probe=3, metric=metric,
                           random_state=0),
        # METIS parts (k-means cells without pymetis) and the learned router,
        # probing every cluster by mass.
        ClusterFilteredKNN(k, n_clusters=3, probe_mass=1.0, metric=metric,
                           hidden_layer_sizes=(4,), epochs=1, random_state=0),
    ]


@st.composite
def shifted_scaled(draw, powers_of_two=False):
    """``(X, Q, k)``; with ``powers_of_two``, ``(X, Q, k, scale)`` where the
    scale is a power of two over most of the dtype's range (float32 2**±100,
    float64 2**±460, the values staying below MAX_ABS_VALUE = 2**500): the
    rows at scale 1 are then ``X / scale`` exactly."""
    n = draw(st.integers(4, 40))
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.RandomState(seed)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    if powers_of_two:
        reach = 100 if dtype == np.float32 else 460
        scale = 2.0 ** draw(st.integers(-reach, reach))
    else:
        scale = 10.0 ** draw(st.floats(-12, 12))
    offset = draw(st.sampled_from([0.0, 1.0, 1e3, 1e6])) * draw(st.sampled_from([1, -1]))
    base = rng.randn(n + 5, d)
    if draw(st.booleans()):  # integer grid: duplicates and ties
        base = np.round(base * 2)
    # The offset is in units of the spread: that ratio is what cancellation
    # in the expanded formula depends on.
    data = ((base + offset) * scale).astype(dtype)
    k = draw(st.integers(1, n - 2))
    if not powers_of_two:
        return data[:n], data[n:], k
    # Not so for float32 rows that the scale made subnormal.
    assume(np.array_equal(data / scale, (base + offset).astype(dtype)))
    return data[:n], data[n:], k, scale


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "manhattan", "chebyshev"])
@given(problem=shifted_scaled(), query_is_train=st.booleans())
def test_exact_settings_equal_float64_brute_force_at_any_offset_and_scale(
    metric, problem, query_is_train
):
    X, Q, k = problem
    Q = None if query_is_train else Q
    ref_dist, ref_ind = brute_force64(X, Q, k, metric)
    # Returned distances are float64 values rounded to the data's dtype.
    rtol = 4 * np.finfo(X.dtype).eps if X.dtype == np.float32 else 1e-9
    for est in exact_estimators(k, metric):
        dist, ind = est.fit(X).kneighbors(Q)
        # (Squared distances in float64, as scikit-learn: see below.)
        assert dist.dtype == (np.float64 if metric == "sqeuclidean" else X.dtype)
        assert_exact(dist, ind, ref_dist, ref_ind, rtol, (type(est).__name__, "brute force"))
        assert est.recall_ == 1.0


@pytest.mark.parametrize("metric, p", [("sqeuclidean", 2), ("minkowski", 3)])
@given(problem=shifted_scaled(powers_of_two=True), query_is_train=st.booleans())
def test_exact_settings_at_power_of_two_scales_over_the_whole_range(
    metric, p, problem, query_is_train
):
    # Cubes of these differences leave float64, and squares of the float32
    # ones leave float32: the answer at scale 2**e must still be the one at
    # scale 1 times 2**e (squared for sqeuclidean).
    X, Q, k, scale = problem
    kwargs = {"p": p} if metric == "minkowski" else {}
    ref_dist, ref_ind = brute_force64(np.float64(1 / scale) * X,
                                      None if query_is_train else np.float64(1 / scale) * Q,
                                      k, metric, **kwargs)
    ref_dist *= scale**2 if metric == "sqeuclidean" else scale
    rtol = 4 * np.finfo(X.dtype).eps if X.dtype == np.float32 else 1e-9
    for est in exact_estimators(k, metric):
        dist, ind = est.set_params(**kwargs).fit(X).kneighbors(None if query_is_train else Q)
        assert_exact(dist, ind, ref_dist, ref_ind, rtol, (type(est).__name__, "brute force"))
        assert est.recall_ == 1.0


@given(problem=shifted_scaled())
@example(problem=(np.array([[3.0], [-1.0], [-1.0], [-5.0]], dtype=np.float32),
                  np.array([[0.0], [1.0]], dtype=np.float32), 1))  # 2 rows left after centring
def test_cosine_exact_at_any_scale(problem):
    # Cosine is not translation invariant: scales only.
    X, Q, k = problem
    X, Q = X - X.mean(0), Q - X.mean(0)
    # scipy's cosine is NaN for a row of zeros (skknn: distance 1).
    X, Q = X[np.abs(X).max(1) > 0], Q[np.abs(Q).max(1) > 0]
    # ClusterFilteredKNN below uses 3 clusters: it needs 3 rows.
    if len(X) < max(k + 1, 3) or len(Q) == 0:
        return
    ref_dist, ref_ind = brute_force64(X, Q, k, "cosine")
    rtol = 4 * np.finfo(X.dtype).eps if X.dtype == np.float32 else 1e-9
    for est in exact_estimators(k, "cosine"):
        dist, ind = est.fit(X).kneighbors(Q)
        # scipy's 1 - cos loses what |a - b|^2 / 2 keeps for nearly parallel rows.
        assert_allclose(dist, ref_dist, rtol=rtol, atol=1e-12)


# -------------------------------------------------------- the reported cases
@pytest.mark.parametrize("offset", [1e4, 1e5])
def test_float32_digits_far_from_origin(offset):
    X = (load_digits().data[:600] + offset).astype(np.float32)
    ref_dist, ref_ind = brute_force64(X, None, 10, "euclidean")
    for est in exact_estimators(10, "euclidean"):
        dist, ind = est.fit(X).kneighbors()
        assert_exact(dist, ind, ref_dist, ref_ind, 1e-6, (type(est).__name__, "brute force"))
        assert est.recall_ == 1.0


def test_projected_map_coordinates_float32():
    rng = np.random.RandomState(0)
    X = (np.array([5e5, 4e6]) + rng.rand(800, 2) * 2e3).astype(np.float32)
    ref_dist, ref_ind = brute_force64(X, None, 10, "euclidean")
    for est in exact_estimators(10, "euclidean"):
        dist, ind = est.fit(X).kneighbors()
        assert_exact(dist, ind, ref_dist, ref_ind, 1e-6, (type(est).__name__, "brute force"))


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_float32_values_around_1e20():
    X, y = load_digits(return_X_y=True)
    X = (X[:500] * 1e20).astype(np.float32)
    y = y[:500]
    ref_dist, ref_ind = brute_force64(X, None, 5, "euclidean")
    for est in exact_estimators(5, "euclidean"):
        dist, ind = est.fit(X).kneighbors()
        assert_exact(dist, ind, ref_dist, ref_ind, 1e-6, (type(est).__name__, "brute force"))
    codes = AutoencoderEmbedder(**FAST_AE, random_state=0).fit_transform(X)
    assert np.isfinite(codes).all() and len(np.unique(codes, axis=0)) > 400
    codes = TripletEmbedder(hidden_layer_sizes=(16,), epochs=2, random_state=0).fit_transform(X, y)
    assert np.isfinite(codes).all() and len(np.unique(codes, axis=0)) > 400


def test_rows_equal_but_for_their_last_bits():
    # Found by hypothesis: a subnormal spread made the ranking scale infinite.
    X = np.full((20, 1), 5.04109396e-307)
    X[3] = np.nextafter(X[3], 1.0)
    for est in exact_estimators(1, "euclidean"):
        params = est.get_params()
        est.set_params(**({"n_clusters": 1} if "n_clusters" in params else {}),
                       **({"n_probe": 1} if params.get("n_probe") else {}))
        dist, ind = est.fit(X).kneighbors([[0.0]])
        # Squares of 5e-307 underflow in float64: they are summed again
        # scaled, and the distance is exact; row 3 is one ulp farther.
        assert dist[0, 0] == 5.04109396e-307 and ind[0, 0] != 3


@pytest.mark.parametrize("p, scale", [(3, 2.0**400), (3, 2.0**-400), (2, 2.0**-540)])
def test_distances_whose_powers_leave_float64_are_exact(p, scale):
    # Cubes of values ~1e120 overflowed (every distance inf) and those of
    # 1e-120 underflowed (every distance 0), as in scikit-learn; squares of
    # 1e-163 too. The answer at scale s is s times the one at scale 1.
    rng = np.random.RandomState(0)
    X, Q = rng.randn(60, 4), rng.randn(8, 4)
    ref = NearestNeighbors(n_neighbors=4, metric="minkowski", p=p).fit(X)
    ref_dist, ref_ind = ref.kneighbors(Q)
    radius = float(np.median(ref_dist[:, 2:]))
    ref_ball = ref.radius_neighbors(Q, radius, return_distance=False)
    for est in exact_estimators(4, "minkowski"):
        est.set_params(p=p).fit(X * scale)
        dist, ind = est.kneighbors(Q * scale)
        assert_allclose(dist, ref_dist * scale, rtol=1e-12)
        assert_array_equal(ind, ref_ind)
        ball = est.radius_neighbors(Q * scale, radius * scale, return_distance=False)
        for got, want in zip(ball, ref_ball):
            assert_array_equal(np.sort(got), np.sort(want))


def test_minkowski_distances_summed_again_in_bounded_memory():
    # The pairs out of range are summed again from their differences; all of
    # them at once took (pairs x features) floats: 15 GB and growing for
    # 2,000 x 20,000 rows of 128 features. Here the queries ~1e-120 and half
    # of the rows ~1e120: the rows are scaled for the typical row (~1e-120),
    # and the 200 x 1,000 pairs with a row ~1e120 overflow. A 305 MiB peak
    # all at once, 32 MiB in batches.
    import tracemalloc

    from skknn._metrics import resolve_metric

    rng = np.random.RandomState(0)
    A, B = rng.randn(200, 64), rng.randn(2000, 64)
    scales = np.where(np.arange(2000) < 1000, 1e120, 1e-120)[:, None]
    metric = resolve_metric("minkowski", p=3)
    tracemalloc.start()
    try:
        D = metric.cdist(A * 1e-120, B * scales)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 80 * 2**20
    want = cdist(A, B, "minkowski", p=3)
    want[:, :1000] = cdist(A * 1e-240, B[:1000], "minkowski", p=3) * 1e120
    assert_allclose(D[:, 1000:], want[:, 1000:] * 1e-120, rtol=1e-12)
    assert_allclose(D[:, :1000], want[:, :1000], rtol=1e-12)


@pytest.mark.parametrize("scale, dtype", [(2.0**400, np.float64), (2.0**-400, np.float64),
                                          (1e30, np.float64), (1e30, np.float32)])
def test_minkowski_rows_far_from_one_are_scaled_not_summed_again(scale, dtype, monkeypatch):
    # Cubes of rows ~2**400 overflow and those of 2**-400 underflow: every
    # pair was summed again from its differences in NumPy (10x the time of
    # scipy's cdist at 1e120). The rows are now divided by a power of two
    # near the typical row's magnitude, and only an outlier's pairs are
    # summed again.
    from skknn._metrics import Metric, resolve_metric

    rng = np.random.RandomState(0)
    A, B = rng.randn(30, 8), rng.randn(300, 8)
    # An outlier, far beyond the typical row: scaled for it, the typical
    # rows' cubes would underflow (float64).
    B[7] *= 2.0**350 if dtype == np.float64 else 2.0**20
    resummed = []
    powered = Metric._powered

    def counted(self, diff):
        resummed.append(len(diff))
        return powered(self, diff)

    A, B = (A * scale).astype(dtype), (B * scale).astype(dtype)
    monkeypatch.setattr(Metric, "_powered", counted)
    D = resolve_metric("minkowski", p=3).cdist(A, B)
    # Each pair's differences at scale 1, divided by the largest.
    diff = np.abs(A.astype(np.float64)[:, None] / scale - B.astype(np.float64)[None] / scale)
    top = diff.max(axis=2)
    want = top * np.cbrt(((diff / top[..., None]) ** 3).sum(axis=2))
    assert_allclose(D, want * scale, rtol=1e-12)
    assert sum(resummed) <= len(A)  # at most the outlier's pairs


@pytest.mark.parametrize("scale", [1e20, 1e-20])
def test_squared_distances_of_float32_rows_are_float64(scale):
    # Returned in float32, squares of rows ~1e20 apart were inf, and those of
    # rows ~1e-20 apart subnormal (digits lost); scikit-learn returns float64.
    rng = np.random.RandomState(0)
    X = (rng.randn(50, 3) * scale).astype(np.float32)
    ref_dist, ref_ind = brute_force64(X, X[:5], 3, "sqeuclidean")
    for est in exact_estimators(3, "sqeuclidean"):
        est.fit(X)
        dist, ind = est.kneighbors(X[:5])
        assert dist.dtype == np.float64
        assert_allclose(dist, ref_dist, rtol=1e-12)
        graph = est.kneighbors_graph(X[:5], mode="distance")
        assert graph.dtype == np.float64 and np.isfinite(graph.data).all()
        ball = est.radius_neighbors(X[:5], radius=float(ref_dist[:, 1].max()))[0]
        assert all(b.dtype == np.float64 and np.isfinite(b).all() for b in ball)


def test_float64_values_beyond_range_are_a_clear_error():
    X = np.ones((10, 2)) * 1e200
    with pytest.raises(ValueError, match="overflow float64"):
        LearnedNeighbors(embedder="passthrough").fit(X)
    nn = LearnedNeighbors(2, embedder="passthrough").fit(np.eye(5))
    with pytest.raises(ValueError, match="overflow float64"):
        nn.kneighbors([[1e300] * 5])
    nn32 = LearnedNeighbors(2, embedder="passthrough").fit(np.eye(5, dtype=np.float32))
    with pytest.raises(ValueError, match="too large for float32"):
        nn32.kneighbors([[1e60] * 5])


def test_recall_and_ties_do_not_depend_on_the_scale():
    X = load_digits().data
    # (2**-540: rows whose float64 products underflow, in the recall
    # reference too.)
    fits = [ClusterFilteredKNN(10, router="centroid", target_recall=0.99, random_state=0).fit(
        X * scale) for scale in (1.0, 1e-14, 1e14, 2.0**-540)]
    assert all(fit.search_params_ == fits[0].search_params_ for fit in fits)
    assert all(fit.recall_ == fits[0].recall_ for fit in fits) and fits[0].recall_ < 1.0
    ref_dist, _ = brute_force64(X * 1e-14, None, 10, "euclidean")
    from skknn._search import recall_at_k

    true_recall = recall_at_k(fits[1].kneighbors()[0], ref_dist)
    assert abs(true_recall - fits[1].recall_) < 0.02


@pytest.mark.parametrize("metric", ["manhattan", "chebyshev", "minkowski"])
def test_routing_for_the_other_metrics_is_centred_and_scaled(metric):
    # These metrics rank the data as given; k-means and nearest-centre
    # routing (float32 expanded distances) saw it as given too: an offset
    # of 1e5 took the Manhattan recall from 0.996 to 0.21, and values beyond
    # float32 put every row in one cluster (brute force, recall 1.0).
    X = load_digits().data
    fits = [ClusterFilteredKNN(10, router="centroid", metric=metric, p=3, random_state=0).fit(
        Xs) for Xs in (X, X * 2.0**200, X * 2.0**-200, X + 1e5)]
    for fit in fits[1:3]:  # powers of two: the same routing rows, bit for bit
        assert fit.search_params_ == fits[0].search_params_
        assert fit.recall_ == fits[0].recall_
        assert_array_equal(fit.labels_, fits[0].labels_)
    assert np.bincount(fits[0].labels_).max() < len(X) / 10
    assert fits[3].recall_ > fits[0].recall_ - 0.02
    assert_allclose(fits[1].cluster_centers_, fits[0].cluster_centers_ * 2.0**200)


def test_parallel_rows_are_at_cosine_distance_exactly_zero():
    # Found by hypothesis: the kernel and the float64 reference normalised
    # differently, 1e-32 against 0, and recall_ counted the tie as a miss.
    X = np.array([[1.0, 1.0], [3.0, 3.0], [1.0, 3.0], [7.0, 21.0]])
    nn = LearnedNeighbors(1, embedder="passthrough", backend="brute", metric="cosine").fit(X)
    dist, ind = nn.kneighbors()
    assert_array_equal(ind.ravel(), [1, 0, 3, 2])
    assert np.all(dist == 0.0) and nn.recall_ == 1.0


def test_recall_reference_does_not_share_the_exact_search(monkeypatch):
    """Break the fast exact selection: recall_ must see it, not report 1.0."""
    import skknn._search as search

    def broken(space, q, k):
        return np.tile(np.arange(k), (len(q), 1)), []

    monkeypatch.setattr(search, "_margin_candidates", broken)
    X = load_digits().data[:400]
    nn = LearnedNeighbors(5, embedder="passthrough", backend="brute").fit(X)
    assert nn.recall_ < 0.2


def _cancelling(name):
    """Data whose neighbours are closer than float64 expanded distances resolve."""
    base = np.random.RandomState(0).randn(2000, 16)
    return {
        "far clusters": ("euclidean", np.vstack([base[:1000] * 1e-4 + 1e5,
                                                 base[1000:] * 1e-4 - 1e5])),
        "far outlier": ("euclidean", np.vstack([base[1:] * 1e-3 + 5.0, np.full((1, 16), 1e8)])),
        "cosine float64": ("cosine", base * 1e-6 + 1e4),
        "cosine float32": ("cosine", (base * 0.1 + 1e7).astype(np.float32)),
    }[name]


def _brute_force_longdouble(X, rows, k, metric):
    """Top-k of X's rows ``rows`` among X, from differences in long double."""
    A = X.astype(np.longdouble)
    if metric == "cosine":
        A /= np.sqrt(np.einsum("ij,ij->i", A, A))[:, None]
    D = np.array([np.einsum("ij,ij->i", A - A[r], A - A[r]) for r in rows])
    D = D / 2 if metric == "cosine" else np.sqrt(D)
    ind = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, ind, axis=1).astype(np.float64), ind


@pytest.mark.parametrize("name", ["far clusters", "far outlier", "cosine float64",
                                  "cosine float32"])
def test_recall_reference_is_exact_where_float64_cancels(name):
    from skknn._metrics import Space, resolve_metric
    from skknn._search import reference_kneighbors

    metric, X = _cancelling(name)
    space = Space(resolve_metric(metric), X)
    rows = np.arange(0, len(X), 9)
    dist, ind = reference_kneighbors(space, space.fitted_rows(rows), 11)
    # Cosine distances of 1e-20 are known to ~1e-6 from float64 unit rows.
    assert_exact(dist, ind, *_brute_force_longdouble(X, rows, 11, metric), 1e-5,
                 ("the recall reference", "long double brute force"))
    # The exact search measured against it: its kernel rounds those cosine
    # distances otherwise (recall_ was 0.98 by distances alone).
    exact = LearnedNeighbors(10, embedder="passthrough", backend="brute", metric=metric)
    assert exact.fit(X).recall_ == 1.0


@pytest.mark.parametrize("name", ["far clusters", "cosine float64"])
def test_recall_is_honest_where_float64_cancels(name):
    # The float64 reference used to select by expanded distances alone:
    # recall_ was 1.0 here against a true 0.10 (far clusters) or 0.35.
    from skknn._search import recall_at_k

    metric, X = _cancelling(name)
    nn = LearnedNeighbors(10, embedder=PCA(4, random_state=0), metric=metric,
                          random_state=0).fit(X)
    exact = LearnedNeighbors(10, embedder="passthrough", backend="brute", metric=metric).fit(X)
    true_recall = recall_at_k(nn.kneighbors()[0].astype(np.float64),
                              exact.kneighbors()[0].astype(np.float64))
    assert true_recall < 0.5 and abs(nn.recall_ - true_recall) < 0.05


@pytest.mark.parametrize("make", [
    lambda: LearnedNeighbors(10, embedder=PCA(4, random_state=0), random_state=0),
    lambda: ClusterFilteredKNN(10, router="centroid", random_state=0),
])
def test_recall_is_honest_with_an_outlier(make):
    # One row at 1e8 among rows 0.004 apart: recall_ read 1.0 (true 0.04 and
    # 0.90) when its k-th distance set the tolerance of every tie.
    _, X = _cancelling("far outlier")
    nn = make().fit(X)
    exact = LearnedNeighbors(10, embedder="passthrough", backend="brute").fit(X)
    ind, exact_ind = nn.kneighbors(return_distance=False), exact.kneighbors()[1]
    true_recall = (ind[:, :, None] == exact_ind[:, None, :]).any(axis=2).mean()
    assert true_recall < 0.95 and abs(nn.recall_ - true_recall) < 0.03


def test_an_outlier_neither_scales_nor_trains_the_networks():
    from sklearn.datasets import make_blobs

    from skknn._indexes import BruteIndex
    from skknn._metrics import inlier_rows

    # Ordinary data have no such outlier: their fits are as without the check.
    assert inlier_rows(load_digits().data) is None
    assert inlier_rows(make_blobs(5000, 12, centers=8, random_state=0)[0]) is None
    _, X = _cancelling("far outlier")
    assert_array_equal(np.flatnonzero(~inlier_rows(X)), [len(X) - 1])
    # The autoencoder's scale is that of the other rows, and the index's
    # centre their mean: recall was 0.045 (codes and rows collapsed in float32).
    ae = AutoencoderEmbedder(**dict(FAST_AE, n_components=8, epochs=5), random_state=0)
    nn = LearnedNeighbors(10, embedder=ae, random_state=0).fit(X)
    assert nn.embedder_.scale_ < 0.01 and nn.recall_ > 0.25
    Z = nn.embedder_.transform(X).astype(np.float32)
    assert np.abs(Z[-1]).max() > 1e6  # the outlier's code, extrapolated
    found = BruteIndex("euclidean").build(Z).query(Z[:200], 10)
    exact = np.argsort(cdist(Z[:200], Z), axis=1, kind="stable")[:, :10]
    assert np.mean([len(set(a) & set(b)) for a, b in zip(found, exact)]) > 9.5
    # The triplet embedder too, with the outlier in one of the classes.
    X, y = load_digits(return_X_y=True)
    X, y = np.vstack([X, np.full((1, 64), 1e9)]), np.append(y, 3)
    triplet = TripletEmbedder(hidden_layer_sizes=(16,), epochs=1, random_state=0).fit(X, y)
    assert triplet.scale_ < 10


def test_an_outlier_neither_centres_nor_scales_the_ranking_rows():
    from skknn._metrics import Space, resolve_metric
    from skknn._search import _RANKABLE_SQ

    rng = np.random.RandomState(0)
    U = rng.rand(2000, 16)
    for X, far in (((U * 1e-3 + 5).astype(np.float32), 1e8), (U.astype(np.float32), 1e30)):
        X[5] = far
        block = Space(resolve_metric("euclidean"), X).fitted.block
        span = np.ptp(block[np.delete(np.arange(len(X)), 5)], axis=0).max()
        # The other rows span ~1 (1e-11 before, all but equal in float32);
        # with the outlier at 1e30, as far as its own reach (2**40) allows.
        assert 0.25 * min(1.0, 2.0**40 / far) <= span <= 2
        sq = np.einsum("ij,ij->i", block.astype(np.float64), block.astype(np.float64))
        assert np.isfinite(block).all() and sq.max() < _RANKABLE_SQ
    # So clusters and nearest-centre routing group the other rows as without
    # it (recall 0.27 with it, 0.83 without, before).
    Q = U[::7] + rng.randn(*U[::7].shape) * 1e-3
    recalls = []
    for X in (U, np.vstack([U, np.full((1, 16), 1e8)])):
        cf = ClusterFilteredKNN(10, router="centroid", partition="kmeans", random_state=0)
        ind = cf.fit(X).kneighbors(Q, return_distance=False)
        exact = NearestNeighbors(n_neighbors=10).fit(X).kneighbors(Q, return_distance=False)
        recalls.append((ind[:, :, None] == exact[:, None, :]).any(axis=2).mean())
    assert recalls[1] > recalls[0] - 0.1, recalls


# -------------------------------------------------------------- atomic fit
class _Interrupt(BaseException):
    pass


@pytest.mark.parametrize("make", [
    lambda: LearnedNeighbors(5, embedder=PCA(4), random_state=0),
    lambda: ClusterFilteredKNN(5, router="centroid", random_state=0),
])
def test_interrupted_refit_keeps_the_previous_fit(make, monkeypatch):
    X = load_digits().data
    est = make().fit(X[:300])
    before = est.kneighbors(X[1500:1520])
    recall = est.recall_

    def interrupted(self, *args):
        self.n_samples_fit_ = -1  # state written before the interruption
        raise _Interrupt

    monkeypatch.setattr(type(est), "_fit_index", interrupted)
    with pytest.raises(_Interrupt):
        est.fit(X[:1400])
    assert est.n_samples_fit_ == 300 and est.recall_ == recall
    after = est.kneighbors(X[1500:1520])
    assert_array_equal(before[1], after[1])
    assert_array_equal(before[0], after[0])

    fresh = make()
    with pytest.raises(_Interrupt):
        fresh.fit(X[:300])
    with pytest.raises(NotFittedError):
        fresh.kneighbors(X[:2])


@pytest.mark.parametrize("embedder, fit_args", [
    (AutoencoderEmbedder(**FAST_AE, random_state=0), ()),
    (TripletEmbedder(hidden_layer_sizes=(8,), epochs=2, random_state=0), ("y",)),
])
def test_interrupted_embedder_fit(embedder, fit_args, monkeypatch):
    X, y = load_digits(return_X_y=True)
    args = [y[:300] for _ in fit_args]
    embedder.fit(X[:300], *args)
    before = embedder.transform(X[:5])

    def interrupted(*a, **kw):
        raise _Interrupt

    module = __import__(type(embedder).__module__, fromlist=["train"])
    monkeypatch.setattr(module, "train", interrupted)
    with pytest.raises(_Interrupt):
        embedder.fit(X[:400, :], *[y[:400] for _ in fit_args])
    assert_array_equal(embedder.transform(X[:5]), before)
    fresh = type(embedder)(**embedder.get_params())
    with pytest.raises(_Interrupt):
        fresh.fit(X[:300], *args)
    with pytest.raises(NotFittedError):
        fresh.transform(X[:2])


# ------------------------------------------------------- embedders needing y
def test_supervised_embedder_gets_y():
    X, y = load_digits(return_X_y=True)
    embedder = TripletEmbedder(hidden_layer_sizes=(32,), n_components=8, epochs=3,
                               random_state=0)
    nn = LearnedNeighbors(5, embedder=embedder, random_state=0).fit(X[:1000], y[:1000])
    assert nn.embedder_.classes_.tolist() == list(range(10))
    assert nn.kneighbors(X[1000:1010])[1].shape == (10, 5)
    with pytest.raises(ValueError, match="supervised: pass the labels"):
        LearnedNeighbors(5, embedder=embedder).fit(X[:1000])


def test_prefit_embedder_through_frozen_estimator():
    X = load_digits().data
    pca = PCA(8, random_state=0).fit(X[:500])
    nn = LearnedNeighbors(5, embedder=FrozenEstimator(pca), random_state=0).fit(X[:1000])
    assert_allclose(nn._embed(X[:3])[0], pca.transform(X[:3]).astype(np.float32), rtol=1e-5)
    assert nn.embedder_.estimator is pca  # used as it is, not refitted


def test_prefit_supervised_embedder_needs_no_labels():
    # FrozenEstimator reports the tags of what it wraps: a fitted supervised
    # embedder said "pass the labels", though frozen it needs none.
    X, y = load_digits(return_X_y=True)
    triplet = TripletEmbedder(n_components=4, epochs=1, batch_size=128,
                              random_state=0).fit(X[:300], y[:300])
    nn = LearnedNeighbors(5, embedder=FrozenEstimator(triplet)).fit(X[:400])
    assert_allclose(nn._embed(X[:3])[0], triplet.transform(X[:3]), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- input forms
@pytest.mark.parametrize("make", [
    lambda: LearnedNeighbors(4, embedder="passthrough", backend="brute"),
    lambda: LearnedNeighbors(4, embedder=PCA(3), random_state=0),
    lambda: ClusterFilteredKNN(4, router="centroid", random_state=0),
])
def test_sparse_csr_fit_and_queries_equal_dense(make):
    X = sparse.random(300, 20, density=0.2, format="csr", random_state=0)
    Q = sparse.random(30, 20, density=0.2, format="csr", random_state=1)
    dense = make().fit(X.toarray())
    sparse_fit = make().fit(X)
    for a, b in [(dense.kneighbors(Q.toarray()), sparse_fit.kneighbors(Q)),
                 (dense.kneighbors(), sparse_fit.kneighbors())]:
        assert_array_equal(a[1], b[1])
        assert_allclose(a[0], b[0])
    radius = float(np.median(dense.kneighbors(Q.toarray())[0]))
    for a, b in zip(dense.radius_neighbors(Q.toarray(), radius)[1],
                    sparse_fit.radius_neighbors(Q, radius)[1]):
        assert_array_equal(a, b)


def test_sparse_rows_too_large_to_densify_are_a_clear_error(monkeypatch):
    import skknn._base as base

    X = sparse.random(300, 20, density=0.2, format="csr", random_state=0)
    assert base._memory_left() is None or base._memory_left() > 0
    monkeypatch.setattr(base, "_memory_left", lambda: 300 * 20 * 8 - 1)
    with pytest.raises(MemoryError, match=r"dense copy .* TruncatedSVD"):
        LearnedNeighbors(4, embedder="passthrough").fit(X)
    monkeypatch.setattr(base, "_memory_left", lambda: None)  # not known: try
    assert LearnedNeighbors(4, embedder="passthrough").fit(X).n_samples_fit_ == 300


@pytest.mark.parametrize("cls, hint", [
    (LearnedNeighbors, "embedder='passthrough', backend='brute'"),
    (ClusterFilteredKNN, "n_probe=n_clusters"),
])
def test_drop_in_keywords(cls, hint):
    X = load_digits().data[:200]
    with pytest.raises(ValueError, match=f"algorithm='kd_tree'.*{hint}"):
        cls(algorithm="kd_tree").fit(X)
    cls(algorithm="auto", leaf_size=10, random_state=0).set_params(
        **({"embedder": "passthrough"} if cls is LearnedNeighbors else {"router": "centroid"})
    ).fit(X)
    nn = cls(3, metric="minkowski", p=np.inf, random_state=0)
    nn.set_params(**({"embedder": "passthrough", "backend": "brute"} if cls is LearnedNeighbors
                     else {"router": "centroid", "n_clusters": 4, "n_probe": 4}))
    dist, ind = nn.fit(X).kneighbors(X[:5])
    ref_dist, _ = brute_force64(X, X[:5], 3, "chebyshev")
    assert_allclose(dist, ref_dist)


def test_search_params_error_on_the_exact_setting():
    nn = LearnedNeighbors(embedder="passthrough", backend="brute").fit(np.eye(6))
    nn.search_params_ = {"candidates_per_neighbor": 4}
    with pytest.raises(ValueError, match="searches exactly: it has no search effort"):
        nn.kneighbors(np.eye(6))
