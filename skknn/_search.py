"""Exact search: chunked top-k, candidate re-ranking and radius queries.

Every function takes query :class:`~skknn._metrics.Rows` of a
:class:`~skknn._metrics.Space` and processes queries in chunks sized by
scikit-learn's ``working_memory``, so no ``n_queries x n_train`` matrix is
ever built for large inputs. Distances leave this module in float64, computed
from differences.

For the dot-product metrics the fast float32 ranking values only *select*:
every row whose ranking value could, within its error bound, be among the
``k`` smallest is re-ranked exactly, so the final rows are those of a float64
brute force whatever the offset or scale of the data.
"""

import os

import numpy as np
from joblib import cpu_count, effective_n_jobs
from sklearn import get_config
from sklearn.utils import gen_batches

from ._kernels import candidate_distances, margin_select, run_in_threads
from ._metrics import Space, _unit_rows, nonzero_2d, resolve_metric

# Rows selected beyond k by ranking values in the searches that merge
# partial results (the float64 reference, cluster probes) before the exact
# re-sort.
_EXTRA_SELECTED = 8
# Temporaries of one chunk of queries never exceed this (nor working_memory):
# larger blocks do not make the matrix products faster, only the peak memory
# higher.
_MAX_CHUNK_BYTES = 128 * 2**20
# Absolute slack of the float64 reference's bounds (prepared rows have norms
# ~1): products below float64's normal range (rows within ~1e-154 of each
# other or of the centre) are rounded to 2**-1074, which the relative bound
# does not cover.
_REFERENCE_ABS_SLACK = 2.0**-1000
# Queries with more exactly re-ranked candidates than this many per neighbour
# (ties, or data the ranking cannot separate) are re-ranked one by one.
_PACKED_PER_NEIGHBOR = 4
# A query whose ranking row has a squared norm beyond this (the fitted
# ranking rows have norms ~1) is too far out for float32 ranking: all rows
# are its candidates.
_RANKABLE_SQ = 1e30
# A query whose (network) representation lies this many times, squared,
# beyond every fitted row's is out of range: the learned part only
# extrapolates there, and float32 distances from it no longer rank anything.
_FAR_RANGE = 1e4
# OMP_NUM_THREADS as this process was started with, read once as OpenMP reads
# it when loaded: Dask's nanny, which starts a LocalCluster's workers, sets it
# to 1 in the process that creates the cluster as well (distributed's docs:
# "poisoning the process running the Nanny"), and the estimators used there
# would search with one thread.
_OMP_NUM_THREADS = os.environ.get("OMP_NUM_THREADS")


def search_threads(n_jobs):
    """Threads of the compiled search parts for an estimator's ``n_jobs``.

    ``None`` means what it means for scikit-learn's own compiled brute force
    (BLAS and OpenMP): every core, unless ``OMP_NUM_THREADS`` (which joblib
    and Dask set in their worker processes; read when skknn is imported) or a
    joblib ``parallel_config(n_jobs=...)`` says fewer. Graph indexes
    (hnswlib, pynndescent) also search with every core by default.
    """
    if n_jobs is not None:
        return effective_n_jobs(n_jobs)
    configured = effective_n_jobs(None)
    if configured != 1:  # inside parallel_config(n_jobs=...)
        return configured
    threads = cpu_count()
    try:
        threads = min(threads, int(_OMP_NUM_THREADS or threads))
    except ValueError:
        pass
    return max(1, threads)


def _query_batches(n_queries, bytes_per_query, n_jobs=1):
    """Slices of queries whose temporaries fit in ``working_memory``."""
    budget = min(get_config()["working_memory"] * 2**20, _MAX_CHUNK_BYTES) / max(n_jobs, 1)
    size = int(max(1, min(n_queries, budget // max(bytes_per_query, 1))))
    return list(gen_batches(n_queries, size))


def stack_parts(parts):
    """Distances and indices of query batches, stacked in order."""
    return np.vstack([d for d, _ in parts]), np.vstack([i for _, i in parts])


def join_parts(parts):
    """Per-query lists of distances and indices of query batches, joined in order."""
    return [d for p in parts for d in p[0]], [i for p in parts for i in p[1]]


def _sorted_topk(dist, ind, k, tie_key=None):
    """The ``k`` smallest of each row, ordered by distance then index; of
    values tied at the ``k``-th, those of the lowest indices. ``tie_key``:
    what orders tied indices (a function of indices; the index if None)."""
    key = (lambda i: i) if tie_key is None else tie_key
    if dist.shape[1] > k:
        part = np.argpartition(dist, k - 1, axis=1)
        kth = np.take_along_axis(dist, part[:, k - 1 : k], axis=1)
        part = part[:, :k]
        # The partition keeps an arbitrary few of the values tied at the k-th:
        # rows where one was left out are ordered in full.
        tied = np.flatnonzero(np.count_nonzero(dist == kth, axis=1) > np.count_nonzero(
            np.take_along_axis(dist, part, axis=1) == kth, axis=1))
        if len(tied):
            part[tied] = np.lexsort((key(ind[tied]), dist[tied]), axis=1)[:, :k]
        dist = np.take_along_axis(dist, part, axis=1)
        ind = np.take_along_axis(ind, part, axis=1)
    order = np.lexsort((key(ind), dist), axis=1)
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(ind, order, axis=1)


# ---------------------------------------------------------------- re-ranking
def rerank(space, q, candidates, k, n_jobs=1, visit=None):
    """Exact top-``k`` of each query among its candidate rows.

    Parameters
    ----------
    space : Space
    q : Rows
        The queries.
    candidates : ndarray of shape (n_queries, n_candidates)
        Fitted row numbers; negative entries mean "no candidate".
    k : int
        Neighbours to return.
    n_jobs : int
        Threads of the compiled distance kernel.
    visit : ndarray of shape (n_queries,), default=None
        Order in which the kernel computes the queries (see
        :func:`~skknn._kernels.candidate_distances`); the result is the same.

    Returns
    -------
    dist, ind : ndarrays of shape (n_queries, k)
        Float64 distances in float64, sorted by distance then index; a
        query with fewer than ``k`` valid candidates gets ``inf`` and ``-1``
        in the missing places.
    """
    candidates = np.asarray(candidates, dtype=np.intp)
    X = space.fitted.data
    dist = candidate_distances(space.metric, q.data, X, candidates, n_jobs, visit)
    ind = np.where(candidates < 0, -1, candidates)
    if dist.shape[1] < k:  # pad, so that every query has k places
        pad = k - dist.shape[1]
        dist = np.hstack([dist, np.full((len(dist), pad), np.inf)])
        ind = np.hstack([ind, np.full((len(ind), pad), -1, dtype=np.intp)])
    # Ties by row number of the fitted data, not by stored position.
    return _sorted_topk(dist, ind, k, tie_key=space.to_ids)


def unsure_queries(space, dist, next_ranking, error):
    """Queries for which a row ranked ``next_ranking`` could, within ``error``,
    beat the exact ``k``-th distance (the last column of ``dist``)."""
    with np.errstate(over="ignore", invalid="ignore"):
        kth = space.to_ranking(dist[:, -1])
        # Not "next - error > kth", so that NaN counts as unsure.
        return np.flatnonzero(~(next_ranking - error > kth))


# -------------------------------------------------------------- exact top-k
def exact_kneighbors(space, q, k, n_jobs=1):
    """Exact top-``k`` neighbours of each query among all fitted rows.

    Returns
    -------
    dist, ind : ndarrays of shape (n_queries, k)
        Float64 distances in float64 (sorted, ties by index) and fitted
        row numbers.
    """
    X = space.fitted
    n = len(X)
    if not space.metric.is_dot_product:
        # cdist is float64 from differences: its values decide directly.
        def one(batch):
            D = space.block_values(q[batch], X.block)
            cols = np.broadcast_to(np.arange(n), D.shape)
            return _sorted_topk(D, cols, k, tie_key=space.to_ids)

        return stack_parts(run_in_threads(one, _query_batches(len(q), 24 * n, n_jobs), n_jobs))

    def one(batch):
        qb = q[batch]
        cand, loose = _margin_candidates(space, qb, k)
        dist, ind = rerank(space, qb, cand, k)
        for row, cols in loose:
            dist[row], ind[row] = rerank(space, qb[row : row + 1], cols[None, :], k)
        return dist, ind

    return stack_parts(run_in_threads(one, _query_batches(len(q), 16 * n, n_jobs), n_jobs))


def _margin_candidates(space, q, k):
    """Rows that may be among each query's exact ``k`` nearest.

    With ranking value ``v`` and error bound ``e`` of a pair, the exact value
    lies in ``[v - e, v + e]``; the ``k``-th smallest upper bound ``U`` is at
    least the exact ``k``-th distance, so every row with ``v - e <= U`` is
    kept. Written out with ``e = tol * (|q|^2 + |x|^2)``, the terms in ``|q|``
    move to the threshold and one float32 array suffices; a compiled kernel
    finds ``U`` and the rows in two passes over each query's products.

    Returns
    -------
    candidates : ndarray of shape (n_queries, width)
        Padded with -1; queries with many candidates are left out of it.
    loose : list of (row, columns)
        Those queries, each with its candidate rows.
    """
    X = space.fitted
    tol = space.tol
    alpha, beta = (-1.0, 0.0) if space.metric.name == "cosine" else (-2.0, 1.0)
    with np.errstate(over="ignore", invalid="ignore"):
        H = q.block @ X.block.T
        rank_add = ((beta + tol) * X.sq).astype(np.float32)
        select_sub = (2 * tol * X.sq).astype(np.float32)
        extra = 2 * tol * q.sq + 2 * space.ABS_SLACK
    width = max(k * _PACKED_PER_NEIGHBOR, k + 64)
    packed, counts = margin_select(H, alpha, rank_add, select_sub, k, extra, width)
    # A query too far out to be ranked in float32 is compared with every row;
    # one with more candidates than the width gets them found again, at its
    # own width.
    far = ~(q.sq <= _RANKABLE_SQ)
    loose = []
    for row in np.flatnonzero(far | (counts > width)):
        if far[row]:
            cols = np.arange(len(X))
        else:
            one = slice(row, row + 1)
            cols = margin_select(H[one], alpha, rank_add, select_sub, k, extra[one],
                                 counts[row])[0][0]
        loose.append((row, cols))
        packed[row] = -1
    kept = counts[~far & (counts <= width)]
    return packed[:, :max(1, int(kept.max(initial=0)))], loose


def reference_kneighbors(space, q, k):
    """Exact top-``k`` in float64, by a route independent of the ranking rows.

    Used to measure ``recall_``: it shares neither the float32 ranking rows
    nor their error bound nor the compiled kernel with the searches it
    measures. Dot-product metrics: float64 expanded distances of centred and
    scaled (cosine: unit) rows, lowered by their own error bound, select
    ``k`` plus a few per query, merged over chunks of fitted rows; their
    distances are then recomputed from differences. Where the bounds cannot
    vouch for a query's selection (neighbours closer than float64
    cancellation resolves, e.g. cosine distances of 1e-15), every row the
    bounds leave in doubt is recomputed too.
    """
    X = space.fitted.data
    metric = space.metric
    if not metric.is_dot_product:
        return _merge_over_rows(q.data, len(X), k, lambda c: metric.cdist(q.data, X[c]))
    n_select = min(len(X), k + _EXTRA_SELECTED)
    Qp = _prepare64(space, q.data)
    q_sq = np.einsum("ij,ij->i", Qp, Qp)
    x_sq = np.empty(len(X))

    def lower(chunk):
        low, x_sq[chunk] = _lower_bounds(space, Qp, q_sq, X[chunk])
        return low

    low, ind = _merge_over_rows(q.data, len(X), n_select, lower)
    # Queries in chunks: the float64 rows of their selected pairs (and
    # differences) stay within the chunk budget.
    dist = np.empty(ind.shape)
    for rows in _query_batches(len(ind), 3 * 8 * n_select * X.shape[1]):
        dist[rows] = metric.paired(q.data[rows, None, :], X[ind[rows]])
    # The k-th smallest upper bound of the selected rows is at least the
    # exact k-th value; rows left out have lower bounds of low[:, -1] on.
    upper = low + 2 * _reference_tol(X.shape[1]) * (q_sq[:, None] + x_sq[ind]) + (
        2 * _REFERENCE_ABS_SLACK)
    upper_k = np.partition(upper, k - 1, axis=1)[:, k - 1]
    dist, ind = _sorted_topk(dist, ind, k)
    if n_select == len(X):
        return dist, ind
    unsure = np.flatnonzero(~(low[:, -1] > upper_k))
    if len(unsure):
        dist[unsure], ind[unsure] = _within_bounds(space, q.data[unsure], Qp[unsure],
                                                   q_sq[unsure], upper_k[unsure], k)
    return dist, ind


def _reference_tol(n_features):
    """Relative error bound of float64 expanded values of prepared rows: the
    products (``n_features`` terms) and the preparation (centring, unit rows),
    with a factor 2 to spare; times ``|q|^2 + |x|^2``."""
    return 2 * (n_features + 16) * float(np.finfo(np.float64).eps)


def _lower_bounds(space, Qp, q_sq, A):
    """Lower bounds of the exact expanded values of the prepared queries
    ``Qp`` against rows ``A`` (squared distances of centred rows; for cosine
    ``2 - 2 cos`` of unit rows, 2 for a row without direction), and the
    prepared rows' squared norms."""
    Ap = _prepare64(space, A)
    a_sq = np.einsum("ij,ij->i", Ap, Ap)
    tol = _reference_tol(A.shape[1])
    D = Qp @ Ap.T
    D *= -2.0
    if space.metric.name == "cosine":
        D += 2.0
        D -= tol * q_sq[:, None]
        D -= tol * a_sq[None, :]
    else:
        D += (1 - tol) * q_sq[:, None]
        D += (1 - tol) * a_sq[None, :]
    D -= _REFERENCE_ABS_SLACK
    return D, a_sq


def _within_bounds(space, Q, Qp, q_sq, upper_k, k):
    """Exact top-``k`` of each query among the rows whose lower bound is at
    most its ``upper_k`` (NaN counts as within), merged over chunks of rows."""
    X = space.fitted.data
    pair_batch = max(1, int(_MAX_CHUNK_BYTES // (24 * X.shape[1])))

    def within(rows):
        low = _lower_bounds(space, Qp, q_sq, X[rows])[0]
        which, cols = nonzero_2d(~(low > upper_k[:, None]))
        D = np.full(low.shape, np.inf)
        for pairs in gen_batches(len(which), pair_batch):
            w, c = which[pairs], cols[pairs]
            D[w, c] = space.metric.paired(Q[w], X[rows.start + c])
        return D

    return _merge_over_rows(Q, len(X), k, within)


def _prepare64(space, A):
    A = A.astype(np.float64)
    if space.metric.name == "cosine":
        unit, zero = _unit_rows(A)
        unit[zero] = 0.0
        return unit
    # Scaled as the ranking rows are (by a power of two: exact): data of
    # 1e-160 would otherwise have products below float64's normal range,
    # whose rounding the relative bounds do not cover.
    A -= space.centre
    A *= space.block_scale
    return A


def _merge_over_rows(Q, n_rows, k, block):
    """Top-``k`` by ``block(rows)`` values, merged over chunks of fitted rows.

    A chunk's temporaries (its float64 rows and block of values) stay within
    the chunk budget.
    """
    n_queries, n_features = Q.shape
    dist = np.full((n_queries, k), np.inf)
    ind = np.full((n_queries, k), -1, dtype=np.intp)
    chunk = max(1, int(_MAX_CHUNK_BYTES // (8 * (n_features + 3 * n_queries))))
    for rows in gen_batches(n_rows, chunk):
        D = block(rows)
        # The chunk's values that may enter, first: no stacked copy of the
        # whole block.
        d, i = _entering(D, rows.start, dist[:, -1], k)
        del D
        dist, ind = _sorted_topk(np.hstack([dist, d]), np.hstack([ind, i]), k)
    return dist, ind


def _entering(D, first, kth, k):
    """The values of a block ``D`` (columns: rows ``first, first + 1, ...``)
    that may enter top-``k`` lists whose ``k``-th values are ``kth``, with
    their rows; padded with ``inf`` and -1.

    Only a value below a query's ``k``-th enters: the rows listed come
    before the block's and win its ties, and their ``inf`` / -1 pads win over
    ``inf`` and NaN. Past the first blocks few values do, and picking them
    out is much cheaper than selecting the ``k`` best of every block row
    (one thread, 1,024 queries and 100k rows: 2.0 s of the reference's
    2.4 s went to that selection).
    """
    keep = D < kth[:, None]
    counts = np.count_nonzero(keep, axis=1)
    width = int(counts.max(initial=0))
    if width > k and 4 * width > D.shape[1]:  # most of the block: select in it
        return _sorted_topk(D, np.broadcast_to(np.arange(first, first + D.shape[1]), D.shape),
                            k)
    which, cols = nonzero_2d(keep)
    slot = np.arange(len(which)) - np.repeat(np.cumsum(counts) - counts, counts)
    d = np.full((len(D), width), np.inf)
    i = np.full((len(D), width), -1, dtype=np.intp)
    d[which, slot], i[which, slot] = D[which, cols], cols + first
    return d, i


def exact_search(X, Q, k, metric="euclidean", n_jobs=1):
    """Exact top-``k`` of the rows of ``Q`` among the rows of ``X`` (for scripts).

    ``Q=None`` queries ``X`` itself (each row's first neighbour is itself).
    Returns float64 distances and row numbers.
    """
    space = Space(resolve_metric(metric), np.asarray(X))
    q = space.fitted if Q is None else space.rows(Q)
    return exact_kneighbors(space, q, k, effective_n_jobs(n_jobs))


# ----------------------------------------------------------- approximate top-k
def block_topk(Q, X, k, X_sqnorm=None, n_jobs=1):
    """Approximate Euclidean top-``k`` of ``X`` for each row of ``Q``.

    For candidate search among codes and for routing by centres: one matrix
    product in the rows' own dtype, no exactness guarantee. Returns squared
    distances and row numbers.
    """
    n_samples = X.shape[0]
    if X_sqnorm is None:
        X_sqnorm = np.einsum("ij,ij->i", X, X)

    def one(batch):
        # Rows that overflowed (far queries) give NaN here and some rows;
        # callers search such queries another way.
        with np.errstate(over="ignore", invalid="ignore"):
            D = Q[batch] @ X.T
            D *= -2.0
            D += np.einsum("ij,ij->i", Q[batch], Q[batch])[:, None]
            D += X_sqnorm[None, :]
        return _sorted_topk(D, np.broadcast_to(np.arange(n_samples), D.shape), k)

    batches = _query_batches(len(Q), (X.itemsize + 16) * n_samples, n_jobs)
    return stack_parts(run_in_threads(one, batches, n_jobs))


# -------------------------------------------------------------------- radius
def block_within(space, q, x_block, x_sq, x_data, radius):
    """Pairs of query and fitted rows within ``radius`` (inclusive).

    The ranking values, widened by their error bound, select the pairs;
    exact distances (from differences) decide.

    Parameters
    ----------
    x_block, x_sq : the ranking form of the fitted rows searched.
    x_data : their exact form.
    radius : float, in float64.

    Returns
    -------
    rows, cols, dist : 1-D ndarrays
        Query row, column of ``x_block`` and exact distance of each pair,
        sorted by row.
    """
    D = space.block_values(q, x_block, x_sq)
    if not space.metric.is_dot_product:
        rows, cols = nonzero_2d(D <= radius)
        return rows, cols, D[rows, cols]
    with np.errstate(over="ignore", invalid="ignore"):
        bound = space.to_ranking(radius) + space.tol * q.sq[:, None] + space.ABS_SLACK
        D -= (space.tol * x_sq).astype(np.float32)[None, :]
        selected = D <= bound
    selected[~(q.sq <= _RANKABLE_SQ)] = True
    rows, cols = nonzero_2d(selected)
    dist = _pairs(space, q.data, x_data, rows, cols)
    keep = dist <= radius
    return rows[keep], cols[keep], dist[keep]


def _pairs(space, Q, X, rows, cols):
    """Exact distances of (row, col) pairs, in bounded chunks."""
    out = np.empty(len(rows))
    if not len(rows):
        return out
    for chunk in gen_batches(len(rows), max(1, _MAX_CHUNK_BYTES // (24 * X.shape[1]))):
        out[chunk] = space.metric.paired(Q[rows[chunk]], X[cols[chunk]])
    return out


def exact_radius(space, q, radius, n_jobs=1):
    """All fitted rows within ``radius`` (inclusive) of each query.

    Returns
    -------
    dist, ind : lists of 1-D ndarrays, one pair per query, in index order.
    """
    X = space.fitted

    def one(batch):
        rows, cols, dist = block_within(space, q[batch], X.block, X.sq, X.data, radius)
        return _split_rows(batch.stop - batch.start, rows, cols, dist)

    parts = run_in_threads(one, _query_batches(len(q), 16 * len(X), n_jobs), n_jobs)
    return join_parts(parts)


def research_cut_off(dist, ind, looked, n_samples, search, also=None):
    """Radius answers that may have been cut off, searched again.

    A query whose ``looked`` rows (its candidates, or the rows of its probed
    clusters) all lie within the radius may have more within it, unless every
    one of the ``n_samples`` fitted rows was looked at: its answer, and those
    of the queries marked in ``also``, are replaced by ``search(queries)``.
    ``dist`` and ``ind`` are per-query sequences, changed in place.
    """
    redo = cut_off([len(i) for i in ind], looked, n_samples)
    if also is not None:
        redo = np.union1d(redo, np.flatnonzero(also))
    if len(redo):
        for row, d_row, i_row in zip(redo, *search(redo)):
            dist[row], ind[row] = d_row, i_row
    return dist, ind


def cut_off(found, looked, n_samples):
    """The queries whose radius answers may be cut off (see
    :func:`research_cut_off`): all their ``looked`` rows were ``found``
    within the radius, and fewer than the ``n_samples`` rows looked at."""
    found = np.asarray(found, dtype=np.intp)
    return np.flatnonzero((found >= looked) & (looked < n_samples))


def candidate_radius(space, q, candidates, radius, n_jobs=1):
    """Like :func:`exact_radius`, searching only each query's candidates."""
    candidates = np.asarray(candidates, dtype=np.intp)
    X = space.fitted.data

    def one(batch):
        cand = candidates[batch]
        dist = candidate_distances(space.metric, q.data[batch], X, cand, 1)
        rows, cols = nonzero_2d(dist <= radius)
        # Candidates come in search order; report them in index order as the
        # exact search does.
        ind = cand[rows, cols]
        order = np.lexsort((ind, rows))
        return _split_rows(len(cand), rows[order], ind[order], dist[rows, cols][order])

    batches = _query_batches(len(q), 16 * candidates.shape[1], n_jobs)
    parts = run_in_threads(one, batches, n_jobs)
    return join_parts(parts)


# ------------------------------------------------------------------- helpers
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


def recall_at_k(approx_dist, exact_dist, rtol=None, approx_ind=None, exact_ind=None):
    """Mean fraction of true ``k`` nearest neighbours that were returned.

    Counted by distance, so that a tie with the exact ``k``-th neighbour
    counts as found: returned point ``j`` of query ``i`` is correct when
    ``approx_dist[i, j] <= exact_dist[i, -1] + rtol * (|exact_dist[i, -1]| + s)``
    with ``s`` the median finite ``k``-th distance of the sample. The
    tolerance is relative to the data's distances, so recall does not depend
    on the units; ``s`` covers a ``k``-th distance of exactly 0 (parallel rows
    for cosine) that two exact computations round differently. (The median,
    not the largest: a far query, an outlier's k-th distance of 4e8 against
    0.004 for the rest, made every near miss within 0.4 a hit.) ``rtol`` is by
    default 4 epsilons of the coarser of the two float dtypes (1e-9 for
    float64): float32 distances compared with a float64 reference carry
    float32 rounding.

    Given the indices of both answers, a returned row of the exact answer
    counts as found whatever its distances: two exact computations of one
    distance (a compiled kernel and NumPy) may differ by more than ``rtol``
    where distances are near the limit of float64 (cosine distances of
    1e-20 are known to about 1e-6).
    """
    if exact_dist.size == 0:
        return 1.0
    if rtol is None:
        eps = [float(np.finfo(a.dtype).eps) for a in (approx_dist, exact_dist)
               if a.dtype.kind == "f"]
        rtol = max([1e-9] + [4 * e for e in eps])
    kth = exact_dist[:, -1:]
    finite = np.isfinite(kth)
    scale = float(np.median(np.abs(kth[finite]))) if finite.any() else 0.0
    hit = approx_dist <= kth + rtol * (np.abs(kth) + scale)
    if approx_ind is not None and exact_ind is not None:
        same = approx_ind[:, :, None] == exact_ind[:, None, :]
        hit |= same.any(axis=2) & (approx_ind >= 0)
    return float(np.mean(hit.sum(axis=1) / exact_dist.shape[1]))
