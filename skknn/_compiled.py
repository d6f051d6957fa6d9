"""The numba kernels behind :mod:`skknn._kernels` (see there), at module level.

Imported by ``_kernels.load`` only, so that ``import skknn`` does not import
numba. The functions are module globals, not closures: numba keys its disk
cache of a function on the function's closure, and a closure over other
compiled functions pickles differently in every process (a cache miss and a
new cache file per process: the kernels compiled anew, ~8 s, in every
process, measured).
"""

import numba
import numpy as np

from ._metrics import POWER_SUM_RANGE

# The cell scan keeps a query's best n rows in a sorted list up to this n, in
# a cut buffer beyond (see scan_cells). One thread, 10k queries, 60k x 128
# codes in 245 cells, ms with a heap / sorted list / buffer: n = 18: 90 /
# 74 / -, 40: 135 / 114 / -, 64: 230-244 / 205 / 204, 100: 366 / - / 296,
# 160: 593-613 / 689 / 440; Fashion-MNIST rows (784-d), n = 18: 127 / 118 /
# 133.
_SORTED_UP_TO = 64

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
    return acc


@jit
def scaled_pow_diff(q, x, p):
    # The largest |difference|, and the sum of the differences' powers
    # divided by it: its terms are at most 1, so they neither overflow nor
    # (where they matter) underflow. See _metrics.POWER_SUM_RANGE.
    big = max_diff(q, x)
    acc = 0.0
    if big > 0.0:
        for t in range(q.shape[0]):
            acc += (abs(np.float64(q[t]) - np.float64(x[t])) / big) ** p
    return big, acc


@jit
def in_power_range(acc):
    return POWER_SUM_RANGE[0] <= acc < POWER_SUM_RANGE[1]


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
            elif code == 0 or code == 1:
                acc = sq_diff(q, X[row])
                if not in_power_range(acc):
                    big, acc = scaled_pow_diff(q, X[row], 2.0)
                    out[i, j] = big * np.sqrt(acc) if code == 0 else big * big * acc
                else:
                    out[i, j] = np.sqrt(acc) if code == 0 else acc
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
                acc = pow_diff(q, X[row], p)
                if in_power_range(acc):
                    out[i, j] = acc ** (1.0 / p)
                else:
                    big, acc = scaled_pow_diff(q, X[row], p)
                    out[i, j] = big * acc ** (1.0 / p)


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
def margin_select(H, alpha, rank_add, select_sub, k, extra, out):
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
