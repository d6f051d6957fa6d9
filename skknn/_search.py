"""Exact search: chunked top-k, candidate re-ranking and radius queries.

Every function takes rows already passed through :meth:`Metric.prepare` and
processes queries in chunks sized by scikit-learn's ``working_memory``, so no
``n_queries x n_train`` matrix is ever built for large inputs. Distances that
leave this module are computed from differences (:meth:`Metric.paired`).
"""

import numpy as np
from sklearn import get_config
from sklearn.utils import gen_batches
from sklearn.utils.parallel import Parallel, delayed

from ._kernels import candidate_distances

# Work (queries x candidates x features) from which re-ranking uses the
# compiled kernel: 3-26x faster than NumPy (measured at 20-80 candidates of
# 784-d rows), but loading it costs ~1.5 s once per process, which small
# searches would not win back.
_KERNEL_FROM = 50_000_000
# Rows selected beyond k by the fast block distances before the accurate
# re-sort, so that rows whose order the expanded formula got wrong at the
# k-th place can still be picked.
_EXTRA_SELECTED = 8
# A query whose (network) representation lies this many times, squared,
# beyond every fitted row's is out of range: the learned part only
# extrapolates there, and float32 distances from it no longer rank anything.
_FAR_RANGE = 1e4


def _query_batches(n_queries, bytes_per_query, n_jobs=1):
    """Slices of queries whose work arrays fit in ``working_memory``."""
    budget = get_config()["working_memory"] * 2**20 / max(n_jobs, 1)
    size = int(max(1, min(n_queries, budget // max(bytes_per_query, 1))))
    return list(gen_batches(n_queries, size))


def _run_batches(func, batches, n_jobs):
    if n_jobs == 1 or len(batches) == 1:
        return [func(b) for b in batches]
    return Parallel(n_jobs=n_jobs, prefer="threads")(delayed(func)(b) for b in batches)


def _sorted_topk(dist, ind, k):
    """The ``k`` smallest of each row, ordered by distance then index."""
    if dist.shape[1] > k:
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        dist = np.take_along_axis(dist, part, axis=1)
        ind = np.take_along_axis(ind, part, axis=1)
    order = np.lexsort((ind, dist), axis=1)
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(ind, order, axis=1)


def rerank(metric, Q, X, candidates, k, n_jobs=1):
    """Exact top-``k`` of each query among its candidate rows of ``X``.

    Parameters
    ----------
    metric : Metric
    Q : ndarray of shape (n_queries, n_features)
        Prepared queries.
    X : ndarray of shape (n_samples, n_features)
        Prepared indexed rows.
    candidates : ndarray of shape (n_queries, n_candidates)
        Row numbers of ``X``; negative entries mean "no candidate".
    k : int
        Neighbours to return, at most ``n_candidates``.
    n_jobs : int
        Threads of the compiled distance kernel.

    Returns
    -------
    dist, ind : ndarrays of shape (n_queries, k)
        Sorted by distance, ``dist`` in the dtype of ``X``; a query with
        fewer than ``k`` valid candidates gets ``inf`` distances and index
        ``-1`` in the missing places.
    """
    candidates = np.asarray(candidates, dtype=np.intp)
    Q = Q.astype(X.dtype, copy=False)
    if candidates.size * X.shape[1] >= _KERNEL_FROM:
        dist = candidate_distances(metric, Q, X, candidates, n_jobs)
    else:
        dist = _numpy_candidate_distances(metric, Q, X, candidates)
    dist, ind = _sorted_topk(dist, np.where(candidates < 0, -1, candidates), k)
    return dist.astype(X.dtype, copy=False), ind


def _numpy_candidate_distances(metric, Q, X, candidates):
    """NumPy twin of :func:`candidate_distances` (float64 accumulation too)."""
    out = np.empty(candidates.shape, dtype=np.float64)
    for batch in _query_batches(len(Q), 3 * candidates.shape[1] * X.shape[1] * 8):
        cand = candidates[batch]
        missing = cand < 0
        out[batch] = metric.paired(
            Q[batch, None, :].astype(np.float64), X[np.where(missing, 0, cand)]
        )
        out[batch][missing] = np.inf
    return out


def block_topk(metric, Q, X, k, X_sqnorm=None, n_jobs=1):
    """Top-``k`` rows of ``X`` for each query by :meth:`Metric.block` distances.

    Fast, and exact for the metrics computed with ``cdist``; for the
    dot-product metrics the order can be wrong where distances differ by less
    than the rounding of the expanded formula. Returns ranking distances.
    """
    n_samples = X.shape[0]
    if X_sqnorm is None and metric.name in ("euclidean", "sqeuclidean"):
        X_sqnorm = np.einsum("ij,ij->i", X, X)

    def one(batch):
        D = metric.block(Q[batch], X, X_sqnorm)
        return _sorted_topk(D, np.broadcast_to(np.arange(n_samples), D.shape), k)

    batches = _query_batches(len(Q), 3 * n_samples * X.itemsize, n_jobs)
    parts = _run_batches(one, batches, n_jobs)
    return np.vstack([d for d, _ in parts]), np.vstack([i for _, i in parts])


def exact_kneighbors(metric, Q, X, k, X_sqnorm=None, n_jobs=1):
    """Exact top-``k`` neighbours of each row of ``Q`` among all rows of ``X``.

    For the dot-product metrics the block distances select ``k`` (plus a
    few) rows whose distances are then recomputed from differences and
    re-sorted, so the returned distances are accurate even where the expanded
    Euclidean formula is not.

    Returns
    -------
    dist, ind : ndarrays of shape (n_queries, k)
        ``dist`` has the dtype of ``X``; ``ind`` is ``np.intp``.
    """
    if not metric.is_dot_product:
        return block_topk(metric, Q, X, k, n_jobs=n_jobs)
    n_select = min(X.shape[0], k + _EXTRA_SELECTED)
    _, ind = block_topk(metric, Q, X, n_select, X_sqnorm, n_jobs)
    return rerank(metric, Q, X, ind, k, n_jobs)


def _block_tolerance(metric, Qb, X_sqmax, dtype):
    """Bound on the error of :meth:`Metric.block` for these queries."""
    if not metric.is_dot_product:
        return 0.0
    eps = np.finfo(dtype).eps
    if metric.name == "cosine":
        return 64 * eps
    return 64 * eps * (np.einsum("ij,ij->i", Qb, Qb)[:, None] + X_sqmax)


def block_within(metric, Q, X, radius, X_sqnorm, X_sqmax):
    """Pairs of rows of ``Q`` and ``X`` within ``radius`` (inclusive).

    The block distances, with a margin for their rounding error, select the
    pairs; their accurate distances (from differences) decide.

    Returns
    -------
    rows, cols, dist : 1-D ndarrays
        Row of ``Q``, row of ``X`` and distance of each pair, sorted by row.
    """
    D = metric.block(Q, X, X_sqnorm)
    bound = metric.to_ranking(radius) + _block_tolerance(metric, Q, X_sqmax, X.dtype)
    rows, cols = np.nonzero(D <= bound)
    dist = metric.paired(Q[rows], X[cols])
    keep = dist <= radius
    return rows[keep], cols[keep], dist[keep]


def exact_radius(metric, Q, X, radius, n_jobs=1):
    """All rows of ``X`` within ``radius`` (inclusive) of each query.

    Returns
    -------
    dist, ind : lists of 1-D ndarrays, one pair per query, in index order.
    """
    X_sqnorm = np.einsum("ij,ij->i", X, X)
    X_sqmax = X_sqnorm.max(initial=0.0)

    def one(batch):
        rows, cols, dist = block_within(metric, Q[batch], X, radius, X_sqnorm, X_sqmax)
        return _split_rows(batch.stop - batch.start, rows, cols, dist)

    batches = _query_batches(len(Q), 3 * X.shape[0] * X.itemsize, n_jobs)
    parts = _run_batches(one, batches, n_jobs)
    return [d for p in parts for d in p[0]], [i for p in parts for i in p[1]]


def candidate_radius(metric, Q, X, candidates, radius, n_jobs=1):
    """Like :func:`exact_radius`, searching only each query's candidates."""
    candidates = np.asarray(candidates, dtype=np.intp)

    def one(batch):
        cand = candidates[batch]
        valid = cand >= 0
        dist = metric.paired(Q[batch, None, :], X[np.where(valid, cand, 0)])
        rows, cols = np.nonzero(valid & (dist <= radius))
        # Candidates come in search order; report them in index order as the
        # exact search does.
        ind = cand[rows, cols]
        order = np.lexsort((ind, rows))
        return _split_rows(len(cand), rows[order], ind[order], dist[rows, cols][order])

    batches = _query_batches(len(Q), 2 * candidates.shape[1] * X.shape[1] * X.itemsize, n_jobs)
    parts = _run_batches(one, batches, n_jobs)
    return [d for p in parts for d in p[0]], [i for p in parts for i in p[1]]


def max_sqnorm(Z):
    """The largest squared row norm of ``Z``, in float64 (0 when empty)."""
    Z = np.asarray(Z, dtype=np.float64)
    return float(np.max(np.einsum("ij,ij->i", Z, Z), initial=0.0))


def beyond_range(Z, sqmax):
    """Rows of ``Z`` that are not finite or lie far beyond squared norm ``sqmax``.

    ``sqmax`` is :func:`max_sqnorm` of the fitted rows; "far" is more than
    ``_FAR_RANGE`` times it.
    """
    Z = np.asarray(Z, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return ~(np.einsum("ij,ij->i", Z, Z) <= _FAR_RANGE * max(sqmax, 1e-30))


def _split_rows(n_rows, rows, cols, dist):
    """Split flat (row, col, dist) triples, sorted by row, into per-row arrays."""
    bounds = np.searchsorted(rows, np.arange(1, n_rows))
    return np.split(dist, bounds), np.split(cols.astype(np.intp, copy=False), bounds)


def drop_self(dist, ind, self_ids):
    """Remove each query's own row from a ``k + 1`` neighbour result.

    Where the query's own row is not among the results (more than ``k``
    duplicates at distance zero, or an approximate search that missed it),
    the last column is removed instead, which keeps the ``k`` closest.
    """
    keep = ind != np.asarray(self_ids)[:, None]
    found = ~np.all(keep, axis=1)
    keep[~found, -1] = False
    shape = (ind.shape[0], ind.shape[1] - 1)
    return dist[keep].reshape(shape), ind[keep].reshape(shape)


def recall_at_k(approx_dist, exact_dist):
    """Mean fraction of true ``k`` nearest neighbours that were returned.

    Counted by distance, so that a tie with the exact ``k``-th neighbour
    counts as found: returned point ``j`` of query ``i`` is correct when
    ``approx_dist[i, j] <= exact_dist[i, -1]`` (up to rounding).
    """
    if exact_dist.size == 0:
        return 1.0
    kth = exact_dist[:, -1:]
    hit = approx_dist <= kth + 1e-7 * np.abs(kth) + 1e-12
    return float(np.mean(hit.sum(axis=1) / exact_dist.shape[1]))
