"""Compiled kernels: distances for re-ranking candidates, scans of code cells.

Re-ranking reads, for each query, a few dozen scattered rows of the fitted
data. In NumPy that means gathering them into a ``(queries, candidates,
features)`` array and making several passes over it; the kernel here reads
each row once, straight from the fitted data, and accumulates in float64:
7-10x faster than the NumPy gather at 10-80 candidates of 784-d rows
(measured), so it is used for every re-ranking.

numba is imported when the kernel is first loaded (it comes with
pynndescent) and the compiled code, in :mod:`skknn._compiled`, is cached on
disk: the first process compiles it (~10 s), later ones load it (~1.5 s,
measured). So that no query pays for it, :func:`preload`
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
            from . import _compiled as c

            distances, scan, by_mass = c.candidate_distances, c.scan_cells, c.order_by_mass
            centre, margin = c.centre_rows, c.margin_select
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
                   np.zeros(1), np.empty((1, 1), dtype=np.intp))
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
    """
    kernel = load()[4]
    out = np.full((len(H), width), -1, dtype=np.intp)
    counts = kernel(np.ascontiguousarray(H, dtype=np.float32), float(alpha), rank_add,
                    select_sub, k, np.ascontiguousarray(extra, dtype=np.float64), out)
    return out, counts


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
