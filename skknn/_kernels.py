"""Compiled kernels: distances for re-ranking candidates, scans of code cells.

Re-ranking reads, for each query, a few dozen scattered rows of the fitted
data. In NumPy that means gathering them into a ``(queries, candidates,
features)`` array and making several passes over it; the kernel here reads
each row once, straight from the fitted data, and accumulates in float64:
7-10x faster than the NumPy gather at 10-80 candidates of 784-d rows
(measured), so it is used for every re-ranking.

numba is imported when the kernel is first loaded (it comes with
pynndescent) and the compiled code is cached on disk; loading it from the
cache takes ~0.6 s per process. So that no query pays for it, :func:`preload`
starts loading in a background thread when a search estimator is fitted (the
estimator waits for it at the end of ``fit``) or unpickled.

The second kernel, :func:`scan_cells`, serves the inverted-file candidate
index: cell by cell, it multiplies the cell's codes with every query probing
that cell (one BLAS product, as an inverted file in faiss does) and keeps
each query's nearest ``n`` in a short sorted list (a cut buffer for large ``n``),
so no per-query distance array is built or partitioned. Measured on 8k
Fashion-MNIST queries, 128-d codes, 5 cells of ~245 codes probed, 2
threads: 55 ms, against 125-145 ms for a scan of one query at a time.
"""

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sklearn.utils import gen_even_slices

# Metric codes understood by the kernel.
_CODES = {
    "euclidean": 0,
    "sqeuclidean": 1,
    "cosine": 2,
    "manhattan": 3,
    "chebyshev": 4,
    "minkowski": 5,
}
_KERNEL = None
_LOCK = threading.Lock()
# The cell scan keeps a query's best n rows in a sorted list up to this n, in
# a cut buffer beyond (see scan_cells). One thread, 10k queries, 60k x 128
# codes in 245 cells, ms with a heap / sorted list / buffer: n = 18: 90 /
# 74 / -, 40: 135 / 114 / -, 64: 230-244 / 205 / 204, 100: 366 / - / 296,
# 160: 593-613 / 689 / 440; Fashion-MNIST rows (784-d), n = 18: 127 / 118 /
# 133.
_SORTED_UP_TO = 64


def _compile():
    import numba

    # Reassociating sums lets the loops below use SIMD; NaN and inf keep
    # their meaning (missing candidates are inf).
    jit = numba.njit(fastmath={"reassoc", "contract"}, cache=True, nogil=True)

    @jit
    def sq_diff(q, x):
        acc = 0.0
        for t in range(q.shape[0]):
            diff = np.float64(q[t]) - np.float64(x[t])
            acc += diff * diff
        return acc

    @jit
    def abs_diff(q, x):
        acc = 0.0
        for t in range(q.shape[0]):
            acc += abs(np.float64(q[t]) - np.float64(x[t]))
        return acc

    @jit
    def max_diff(q, x):
        acc = 0.0
        for t in range(q.shape[0]):
            acc = max(acc, abs(np.float64(q[t]) - np.float64(x[t])))
        return acc

    @jit
    def pow_diff(q, x, p):
        acc = 0.0
        for t in range(q.shape[0]):
            acc += abs(np.float64(q[t]) - np.float64(x[t])) ** p
        return acc ** (1.0 / p)

    @jit
    def max_abs(x):
        acc = 0.0
        for t in range(x.shape[0]):
            acc = max(acc, abs(np.float64(x[t])))
        return acc

    @jit
    def scaled_norm(x, big):
        acc = 0.0
        for t in range(x.shape[0]):
            v = np.float64(x[t]) / big
            acc += v * v
        return np.sqrt(acc)

    @jit
    def unit_sq_diff(q, x, q_big, q_norm, x_big, x_norm):
        # As Metric.paired: divide by the largest entry, then by the norm, so
        # that proportional rows give identical unit rows (distance exactly 0).
        acc = 0.0
        for t in range(q.shape[0]):
            diff = np.float64(q[t]) / q_big / q_norm - np.float64(x[t]) / x_big / x_norm
            acc += diff * diff
        return acc

    @numba.njit(cache=True, nogil=True)
    def candidate_distances(Q, X, candidates, code, p, out, visit):
        # Queries in the order of visit (rows of X read in storage order
        # share cache lines), each written to its own row of out.
        for r in range(visit.shape[0]):
            i = visit[r]
            q = Q[i]
            q_big = max_abs(q) if code == 2 else 0.0
            q_norm = scaled_norm(q, q_big) if q_big > 0 else 0.0
            for j in range(candidates.shape[1]):
                row = candidates[i, j]
                if row < 0:
                    out[i, j] = np.inf
                elif code == 0:
                    out[i, j] = np.sqrt(sq_diff(q, X[row]))
                elif code == 1:
                    out[i, j] = sq_diff(q, X[row])
                elif code == 2:
                    # See Metric.paired: rows normalised in float64, |a - b|^2 / 2,
                    # and 1 for a row without direction.
                    x_big = max_abs(X[row])
                    x_norm = scaled_norm(X[row], x_big) if x_big > 0 else 0.0
                    if q_big == 0.0 or x_big == 0.0:  # a row of zeros: no direction
                        out[i, j] = 1.0
                    else:
                        d = 0.5 * unit_sq_diff(q, X[row], q_big, q_norm, x_big, x_norm)
                        out[i, j] = min(max(d, 0.0), 2.0)
                elif code == 3:
                    out[i, j] = abs_diff(q, X[row])
                elif code == 4:
                    out[i, j] = max_diff(q, X[row])
                else:
                    out[i, j] = pow_diff(q, X[row], p)

    @jit
    def select_smallest(d, ix, length, n):
        # Move the n smallest of d[:length] (finite) to the front, in no
        # particular order, ix alongside (quickselect); return the largest
        # of them.
        lo, hi = 0, length - 1
        while lo < hi:
            pivot = d[(lo + hi) // 2]
            a, b = lo, hi
            while a <= b:
                while d[a] < pivot:
                    a += 1
                while d[b] > pivot:
                    b -= 1
                if a <= b:
                    d[a], d[b] = d[b], d[a]
                    ix[a], ix[b] = ix[b], ix[a]
                    a += 1
                    b -= 1
            if n - 1 <= b:
                hi = b
            elif n - 1 >= a:
                lo = a
            else:
                break
        top = d[0]
        for t in range(1, n):
            top = max(top, d[t])
        return top

    @jit
    def scan_cells(Q, Z, z_sq, starts, probes, out, best_d):
        # Cell by cell, one matrix product of the cell's codes with every
        # query probing it; each query keeps its n best (values in best_d,
        # positions in out). Up to _SORTED_UP_TO of them in a sorted list;
        # beyond, rows below a threshold are appended to a buffer of 2n,
        # and a full buffer is cut to its n best (the threshold: their
        # largest). Both beat a heap, which mispredicts a branch per level.
        n_queries, n_probes = probes.shape
        n = out.shape[1]
        n_cells = starts.shape[0] - 1
        # The queries probing each cell, cell after cell.
        offsets = np.zeros(n_cells + 1, dtype=np.intp)
        for i in range(n_queries):
            for p in range(n_probes):
                if probes[i, p] >= 0:
                    offsets[probes[i, p] + 1] += 1
        for cell in range(n_cells):
            offsets[cell + 1] += offsets[cell]
        filled = offsets[:-1].copy()
        probing = np.empty(offsets[-1], dtype=np.intp)
        for i in range(n_queries):
            for p in range(n_probes):
                cell = probes[i, p]
                if cell >= 0:
                    probing[filled[cell]] = i
                    filled[cell] += 1
        best_d[:] = np.inf
        out[:] = -1
        big = n > _SORTED_UP_TO
        n_big, cap = (n_queries, 2 * n) if big else (0, 0)
        buf_d = np.empty((n_big, cap), dtype=np.float32)
        buf_i = np.empty((n_big, cap), dtype=np.intp)
        count = np.zeros(n_big, dtype=np.intp)
        thresh = np.full(n_big, np.inf, dtype=np.float32)
        for cell in range(n_cells):
            first, stop = starts[cell], starts[cell + 1]
            n_probing = offsets[cell + 1] - offsets[cell]
            if n_probing == 0 or stop == first:
                continue
            queries = probing[offsets[cell]:offsets[cell + 1]]
            Qc = np.empty((n_probing, Q.shape[1]), dtype=np.float32)
            for a in range(n_probing):
                Qc[a] = Q[queries[a]]
            # Ranking values |z|^2 - 2 q.z of centred codes (|q|^2 is the
            # same for all of a query's codes).
            G = np.dot(Qc, Z[first:stop].T)
            for a in range(n_probing):
                i = queries[a]
                if big:
                    bd, bi = buf_d[i], buf_i[i]
                    filled_i, below = count[i], thresh[i]
                    for b in range(stop - first):
                        value = z_sq[first + b] - 2.0 * G[a, b]
                        if value < below:
                            bd[filled_i] = value
                            bi[filled_i] = first + b
                            filled_i += 1
                            if filled_i == cap:
                                below = select_smallest(bd, bi, cap, n)
                                filled_i = n
                    count[i], thresh[i] = filled_i, below
                    continue
                hd, hi = best_d[i], out[i]
                worst = hd[n - 1]
                for b in range(stop - first):
                    value = z_sq[first + b] - 2.0 * G[a, b]
                    if value < worst:
                        pos = n - 1
                        while pos > 0 and hd[pos - 1] > value:
                            hd[pos] = hd[pos - 1]
                            hi[pos] = hi[pos - 1]
                            pos -= 1
                        hd[pos] = value
                        hi[pos] = first + b
                        worst = hd[n - 1]
        for i in range(n_big):
            kept = count[i]
            if kept > n:
                select_smallest(buf_d[i], buf_i[i], kept, n)
                kept = n
            for t in range(kept):
                best_d[i, t] = buf_d[i, t]
                out[i, t] = buf_i[i, t]

    # No fastmath: the ranking values are rounded as NumPy's float32 would
    # round them (the margin below is an error bound of those values).
    @numba.njit(cache=True, nogil=True)
    def margin_select(H, alpha, rank_add, select_sub, k, extra, out, threshold):
        # Per query (row of H, the products q.x): its k-th smallest ranking
        # value alpha h + rank_add, in a sorted list (a cut buffer for large
        # k, as scan_cells); then the rows whose value minus select_sub is
        # at most that plus extra[i], written to out[i] up to its width.
        # Returns each query's count of such rows (more than the width: the
        # caller finds them again).
        n_queries, n = H.shape
        width = out.shape[1]
        counts = np.zeros(n_queries, dtype=np.intp)
        big = k > _SORTED_UP_TO
        cap = 2 * k if big else k
        best = np.empty(cap, dtype=np.float32)
        best_i = np.empty(cap, dtype=np.intp)
        for i in range(n_queries):
            h = H[i]
            best[:] = np.inf
            worst = np.float32(np.inf)
            filled = 0
            for j in range(n):
                value = np.float32(alpha * h[j]) + rank_add[j]
                if not value < worst:
                    continue
                if big:
                    best[filled] = value
                    filled += 1
                    if filled == cap:
                        worst = select_smallest(best, best_i, cap, k)
                        filled = k
                    continue
                pos = k - 1
                while pos > 0 and best[pos - 1] > value:
                    best[pos] = best[pos - 1]
                    pos -= 1
                best[pos] = value
                worst = best[k - 1]
            if big:
                kth = np.float32(np.inf)
                if filled >= k:
                    kth = select_smallest(best, best_i, filled, k)
            else:
                kth = best[k - 1]
            limit = np.float64(kth) + extra[i]
            threshold[i] = limit
            c = 0
            for j in range(n):
                value = (np.float32(alpha * h[j]) + rank_add[j]) - select_sub[j]
                if np.float64(value) <= limit:
                    if c < width:
                        out[i, c] = j
                    c += 1
            counts[i] = c
        return counts

    @jit
    def sq_norm(row):
        acc = 0.0
        for t in range(row.shape[0]):
            acc += np.float64(row[t]) * np.float64(row[t])
        return acc

    # No fastmath here: each entry is rounded exactly as NumPy's float32
    # (data - centre) * scale would round it.
    @numba.njit(cache=True, nogil=True)
    def centre_rows(data, centre, scale, block, sq):
        for i in range(data.shape[0]):
            for t in range(data.shape[1]):
                block[i, t] = (data[i, t] - centre[t]) * scale
            sq[i] = sq_norm(block[i])

    @numba.njit(cache=True, nogil=True)
    def order_by_mass(P, score, thresholds, out):
        # Per query, clusters by decreasing score (ties: lower id first)
        # until their P sum to the query's threshold; -1 after. A query
        # that needs more than out.shape[1] clusters gets count -1. (One
        # selection pass per probe: at the few probes of most queries,
        # cheaper than sorting or a heap of all the clusters, measured.)
        n_queries, n_clusters = P.shape
        width = out.shape[1]
        counts = np.empty(n_queries, dtype=np.intp)
        taken = np.zeros(n_clusters, dtype=np.bool_)
        for i in range(n_queries):
            taken[:] = False
            out[i] = -1
            total = 0.0
            counts[i] = -1
            for j in range(width):
                best, best_score = -1, -np.inf
                for c in range(n_clusters):
                    if not taken[c] and score[i, c] > best_score:
                        best, best_score = c, score[i, c]
                if best < 0:  # only NaN or -inf scores left
                    break
                taken[best] = True
                out[i, j] = best
                total += P[i, best]
                if total >= thresholds[i] or j + 1 == n_clusters:
                    counts[i] = j + 1
                    break
        return counts

    return candidate_distances, scan_cells, order_by_mass, centre_rows, margin_select


def load():
    """The compiled kernels, compiled or loaded from numba's cache on first call.

    Returns
    -------
    distances, scan, by_mass, centre, margin : the re-ranking, cell-scanning,
        probe-ordering, row-centring and exact-selection kernels.
    """
    global _KERNEL
    with _LOCK:
        if _KERNEL is None:
            distances, scan, by_mass, centre, margin = _compile()
            # numba loads one specialisation per argument types on its first
            # call: do it here for every dtype used, not in a user's query.
            for dtype in (np.float32, np.float64):
                rows = np.zeros((1, 1), dtype=dtype)
                distances(rows, rows, np.zeros((1, 1), dtype=np.intp), 0, 2.0, np.empty((1, 1)),
                          np.zeros(1, dtype=np.intp))
            codes = np.zeros((1, 1), dtype=np.float32)
            scan(codes, codes, np.zeros(1, dtype=np.float32), np.array([0, 1], dtype=np.intp),
                 np.zeros((1, 1), dtype=np.intp), np.empty((1, 1), dtype=np.intp),
                 np.empty((1, 1), dtype=np.float32))
            for dtype in (np.float32, np.float64):
                ones = np.ones((1, 1), dtype=dtype)
                by_mass(ones, ones, np.ones(1), np.empty((1, 1), dtype=np.intp))
            centre(codes, np.zeros(1, dtype=np.float32), np.float32(1.0), np.empty_like(codes),
                   np.empty(1))
            margin(codes, -2.0, np.zeros(1, dtype=np.float32), np.zeros(1, dtype=np.float32), 1,
                   np.zeros(1), np.empty((1, 1), dtype=np.intp), np.empty(1))
            _KERNEL = distances, scan, by_mass, centre, margin
    return _KERNEL


def preload():
    """Start :func:`load` in a daemon thread; returns the thread (None if loaded).

    A failure there (e.g. numba missing) surfaces at the next :func:`load`.
    """
    if _KERNEL is not None:
        return None
    thread = threading.Thread(target=_quiet_load, name="skknn-kernel-load", daemon=True)
    thread.start()
    return thread


def _quiet_load():
    try:
        load()
    except Exception:  # reported by the next load(), in the caller's thread
        pass


def candidate_distances(metric, Q, X, candidates, n_jobs=1, visit=None):
    """Distances from each query to each of its candidate rows.

    Parameters
    ----------
    metric : Metric
    Q : ndarray of shape (n_queries, n_features)
        Queries, same dtype as ``X``.
    X : ndarray of shape (n_samples, n_features)
        Fitted rows.
    candidates : ndarray of shape (n_queries, n_candidates)
        Row numbers into ``X``; negative entries give ``inf``.
    n_jobs : int
        Threads (slices of the queries run side by side).
    visit : ndarray of shape (n_queries,), default=None
        The order in which to compute the queries' rows (a permutation; None:
        as given). Queries whose candidates are near each other in ``X``
        are best visited together: they read the same rows from memory.

    Returns
    -------
    dist : ndarray of shape (n_queries, n_candidates), float64
    """
    kernel = load()[0]
    Q, X = np.ascontiguousarray(Q), np.ascontiguousarray(X)
    candidates = np.ascontiguousarray(candidates, dtype=np.intp)
    out = np.empty(candidates.shape, dtype=np.float64)
    code, p = _CODES[metric.name], float(metric.p)

    visit = np.arange(len(Q)) if visit is None else np.ascontiguousarray(visit, dtype=np.intp)
    in_slices(lambda rows: kernel(Q, X, candidates, code, p, out, visit[rows]), len(Q), n_jobs)
    return out


def margin_select(H, alpha, rank_add, select_sub, k, extra, width):
    """The rows each query of exact search keeps (see ``_search._margin_candidates``).

    Parameters
    ----------
    H : ndarray of shape (n_queries, n_rows), float32
        The products of query and fitted ranking rows.
    alpha : float
        -2 (squared distances) or -1 (cosine): the ranking value of a pair
        is ``alpha * h + rank_add`` in float32.
    rank_add, select_sub : ndarray of shape (n_rows,), float32
        Per fitted row: added to the ranking value, and subtracted from it
        for the selection (its error bound).
    k : int
        Neighbours sought.
    extra : ndarray of shape (n_queries,)
        Per query, added to its ``k``-th smallest ranking value to make its
        threshold.
    width : int
        Columns of the returned rows.

    Returns
    -------
    rows : ndarray of shape (n_queries, width), intp
        Per query, its kept rows in order (-1 after); only the first
        ``width`` of a query keeping more.
    counts : ndarray of shape (n_queries,)
        The number of rows each query keeps.
    threshold : ndarray of shape (n_queries,)
        Each query's threshold (float64).
    """
    kernel = load()[4]
    out = np.full((len(H), width), -1, dtype=np.intp)
    threshold = np.empty(len(H))
    counts = kernel(np.ascontiguousarray(H, dtype=np.float32), float(alpha), rank_add,
                    select_sub, k, np.ascontiguousarray(extra, dtype=np.float64), out,
                    threshold)
    return out, counts, threshold


def scan_cells(Q, Z, z_sq, starts, probes, n, n_jobs=1, return_values=False):
    """The ``n`` nearest codes of each query among those of its probed cells.

    Codes are ranked by ``|z|^2 - 2 q.z`` in float32, so they should be
    centred (the inverted file and the ranking rows of exact search are):
    this only selects candidates, which are then re-ranked exactly.

    Parameters
    ----------
    Q : ndarray of shape (n_queries, n_components), float32
        Query codes.
    Z : ndarray of shape (n_codes, n_components), float32
        Codes stored cell after cell.
    z_sq : ndarray of shape (n_codes,), float32
        Their squared norms.
    starts : ndarray of shape (n_cells + 1,)
        Cell ``c`` holds the codes ``starts[c]:starts[c + 1]``.
    probes : ndarray of shape (n_queries, n_probes)
        Cells to scan per query; negative entries are skipped.
    n : int
        Codes to return per query.
    n_jobs : int
        Threads (slices of the queries run side by side).
    return_values : bool
        Also return the ranking values of the rows found.

    Returns
    -------
    rows : ndarray of shape (n_queries, n), intp
        Positions in ``Z`` (in no particular order); -1 where fewer than
        ``n`` codes were scanned.
    values : ndarray of shape (n_queries, n), float32
        Their values ``|z|^2 - 2 q.z`` (``inf`` where no row); only with
        ``return_values``. Every row scanned but not returned has a value
        at least ``values.max(axis=1)``.
    """
    kernel = load()[1]
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    probes = np.ascontiguousarray(probes, dtype=np.intp)
    out = np.empty((len(Q), n), dtype=np.intp)
    values = np.empty((len(Q), n), dtype=np.float32)
    in_slices(lambda rows: kernel(Q[rows], Z, z_sq, starts, probes[rows], out[rows],
                                  values[rows]),
              len(Q), n_jobs)
    return (out, values) if return_values else out


def scan_cell_groups(Q, Z, z_sq, starts, probes, n, n_jobs=1):
    """:func:`scan_cells` with values, the threads splitting the cells, not the queries.

    Each thread scans its group of consecutive cells (about equal work) for
    every query, so each cell is one matrix product with *all* the queries
    probing it: products twice as tall as with the queries split in two,
    which runs them faster (measured on 784-d rows: 79 GFLOPS with 51 rows
    per product, 123 with 135). Each query's results of the groups are then
    merged; every row scanned but not returned still has a value at least
    ``values.max(axis=1)`` (the ``n``-th smallest of a group holding ``n``
    is at least the merged ``n``-th).

    Returns
    -------
    rows, values : as :func:`scan_cells` with ``return_values=True``.
    """
    n_cells = len(starts) - 1
    n_groups = max(1, min(n_jobs, n_cells, len(Q) // 64))
    if n_groups == 1:
        return scan_cells(Q, Z, z_sq, starts, probes, n, 1, return_values=True)
    kernel = load()[1]
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    probes = np.ascontiguousarray(probes, dtype=np.intp)
    valid = probes >= 0
    work = np.bincount(probes[valid], minlength=n_cells) * np.diff(starts)
    bounds = np.cumsum(work) * n_groups // max(int(work.sum()), 1)
    group = np.minimum(bounds, n_groups - 1)  # of each cell, non-decreasing

    def run(g):
        mine = np.where(valid & (group[np.maximum(probes, 0)] == g), probes, -1)
        out = np.empty((len(Q), n), dtype=np.intp)
        values = np.empty((len(Q), n), dtype=np.float32)
        kernel(Q, Z, z_sq, starts, mine, out, values)
        return out, values

    parts = run_in_threads(run, list(range(n_groups)), n_jobs)
    rows = np.hstack([r for r, _ in parts])
    values = np.hstack([v for _, v in parts])
    best = np.argpartition(values, n - 1, axis=1)[:, :n]
    return np.take_along_axis(rows, best, axis=1), np.take_along_axis(values, best, axis=1)


def centre_rows(data, centre, scale, block, sq, n_jobs=1):
    """``block = (data - centre) * scale`` in float32 and ``sq`` its squared row norms.

    One pass over float32 rows, in up to ``n_jobs`` threads, into the given
    outputs: each entry is rounded as NumPy's float32 arithmetic rounds it,
    and ``sq`` is accumulated in float64 (a non-finite ``sq`` marks a row
    that overflowed). Measured on 10k x 784: ~3-5 ms against ~16-23 ms for
    the NumPy passes (subtract, scale, check, norms) and their temporaries.

    Parameters
    ----------
    data : ndarray of shape (n_rows, n_features), float32
    centre : ndarray of shape (n_features,), float32
    scale : float
    block : ndarray of shape (n_rows, n_features), float32
        Output.
    sq : ndarray of shape (n_rows,), float64
        Output.
    n_jobs : int
    """
    kernel = load()[3]
    data = np.ascontiguousarray(data, dtype=np.float32)
    centre = np.ascontiguousarray(centre, dtype=np.float32)
    in_slices(lambda rows: kernel(data[rows], centre, np.float32(scale), block[rows], sq[rows]),
              len(data), n_jobs)


def order_by_mass(P, score, thresholds, width):
    """Clusters to probe per query: by decreasing ``score`` until ``P`` sums to a threshold.

    Parameters
    ----------
    P : ndarray of shape (n_queries, n_clusters)
        Weight of each cluster (probabilities, or any positive multiple of
        them per query).
    score : ndarray of shape (n_queries, n_clusters)
        Order of preference, in ``P``'s dtype (ties: lower cluster id first;
        NaN is never probed).
    thresholds : ndarray of shape (n_queries,)
        Weight to reach, per query (compared in float64).
    width : int
        Most clusters to look for per query.

    Returns
    -------
    order : ndarray of shape (n_queries, width)
        Cluster ids, best first, -1 after a query's last.
    counts : ndarray of shape (n_queries,)
        Clusters per query; -1 for a query that needs more than ``width``.
    """
    kernel = load()[2]
    out = np.empty((len(P), width), dtype=np.intp)
    counts = kernel(np.ascontiguousarray(P), np.ascontiguousarray(score),
                    np.ascontiguousarray(thresholds, dtype=np.float64), out)
    return out, counts


def in_slices(run, n_queries, n_jobs):
    """``run(slice)`` over even slices of the queries, in up to ``n_jobs`` threads.

    The kernels release the GIL, so slices run side by side (a serial kernel
    loads far faster than numba's parallel one, whose threading layer costs
    ~2 s to start in every process). See :func:`run_in_threads`.

    Returns
    -------
    results : list
        What ``run`` returned for each slice, in order.
    """
    n_slices = max(1, min(n_jobs, n_queries // 64))
    return run_in_threads(run, list(gen_even_slices(n_queries, n_slices)), n_jobs)


def run_in_threads(func, batches, n_jobs):
    """``func`` over the batches, in up to ``n_jobs`` threads; results in order.

    Side by side the threads run their matrix products with one BLAS thread
    each: a multi-threaded BLAS under several threads oversubscribes the
    cores (measured on 60k x 784 exact search, 2 cores: 1,270 queries/s with
    both, 1,670 with one BLAS thread per batch, 1,550 serial), and its idle
    threads spin for a while after each product, slowing whatever runs next
    (an inverted-file scan right after a two-thread encoder product took
    80-100 ms instead of 55).
    """
    if n_jobs == 1 or len(batches) <= 1:
        return [func(batch) for batch in batches]
    with blas_controller().limit(limits=1, user_api="blas"):
        with ThreadPoolExecutor(min(n_jobs, len(batches))) as pool:
            return list(pool.map(func, batches))


@functools.cache
def blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries (inspected once)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()
