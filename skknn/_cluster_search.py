"""Exact search among the rows of given clusters, for ClusterFilteredKNN.

The fitted rows are stored cluster after cluster (cluster ``c`` at stored
positions ``_offsets[c]:_offsets[c + 1]``); a query's probes name the
clusters it searches, -1 padding. Kept apart from the estimator, which holds
the partition, the router and the search effort.
"""

import numpy as np

from ._kernels import in_slices, scan_cell_groups
from ._search import (
    _EXTRA_SELECTED,
    _query_batches,
    _sorted_topk,
    _split_rows,
    block_within,
    rerank,
    stack_parts,
    unsure_queries,
)


class ClusterSearchMixin:
    """k-NN and radius search in the probed clusters of a fitted
    ClusterFilteredKNN (its ``_space``, ``_offsets``, ``n_clusters_``,
    ``_block_sq32`` and ``_sq_max``)."""

    def _by_cluster(self, probes):
        """For each probed, non-empty cluster: its stored rows and its queries.

        Yields ``(lo, hi, queries)`` with the cluster's rows at stored
        positions ``lo:hi``, in batches of queries that fit in working memory.
        """
        n_probe = probes.shape[1]
        flat = probes.ravel()
        valid = np.flatnonzero(flat >= 0)
        order = valid[np.argsort(flat[valid], kind="stable")]
        bounds = np.searchsorted(flat[order], np.arange(self.n_clusters_ + 1))
        for c in np.flatnonzero(np.diff(bounds)):
            lo, hi = self._offsets[c], self._offsets[c + 1]
            if hi > lo:
                queries = order[bounds[c] : bounds[c + 1]] // n_probe
                for batch in _query_batches(len(queries), 3 * (hi - lo) * 8):
                    yield lo, hi, queries[batch]

    def _probed_rows(self, probes_row):
        return np.concatenate([np.arange(self._offsets[c], self._offsets[c + 1])
                               for c in probes_row if c >= 0] or [np.empty(0, np.intp)])

    def _probe_knn(self, q, k, probes, n_jobs=1):
        """Top-``k`` of each query among the rows of its probed clusters.

        For the dot-product metrics a compiled scan ranks the rows of each
        cluster against all queries probing it with one float32 matrix
        product and keeps ``k`` plus a few per query (threads split the
        clusters); the exact distances of the ``k`` best then decide, unless
        a row ranked after them could, within the ranking's error bound, beat
        the exact ``k``-th: then all rows the scan kept are re-ranked, and if
        even a row it left out could, all probed rows (threads split the
        queries). Other metrics rank by exact distances, cluster by cluster.
        """
        space, fitted = self._space, self._space.fitted
        if not space.metric.is_dot_product:
            return stack_parts(in_slices(
                lambda rows: self._probe_knn_exact(q[rows], k, probes[rows]), len(q), n_jobs))
        found, values = scan_cell_groups(q.block, fitted.block, self._block_sq32, self._offsets,
                                         probes, k + _EXTRA_SELECTED, n_jobs)
        if not len(q):
            return found[:, :k].astype(np.float64), found[:, :k]
        # Re-ranking reads the fitted rows from memory; queries visited in
        # the order of their best row read them in storage (cluster) order,
        # sharing cache lines: 34 -> 23 ms for 10k Fashion-MNIST queries (one
        # thread), kneighbors 181 -> 175 ms (two).
        visit = np.argsort(found[np.arange(len(q)), np.argmin(values, axis=1)], kind="stable")
        return self._rerank_found(q, k, probes, found, values, visit, n_jobs)

    def _rerank_found(self, q, k, probes, found, values, visit, n_jobs):
        """Exact top-``k`` from the scan's rows and values (see :meth:`_probe_knn`),
        the ``k`` best of each query computed in the order ``visit``."""
        space = self._space
        order = np.argsort(values, axis=1)
        found = np.take_along_axis(found, order, axis=1)
        with np.errstate(over="ignore", invalid="ignore"):
            # Ranking values of the rows found, ascending (inf: none).
            ranking = q.sq[:, None] + np.take_along_axis(values, order, axis=1)
            if space.metric.name == "cosine":
                ranking /= 2.0  # 1 - cos = |q - x|^2 / 2 for unit rows
        error = space.error(q.sq, self._sq_max)
        dist, ind = rerank(space, q, found[:, :k], k, n_jobs, visit)
        unsure = unsure_queries(space, dist, ranking[:, k], error)
        if len(unsure):
            dist[unsure], ind[unsure] = rerank(space, q[unsure], found[unsure], k, n_jobs)
            # Rows the scan left out rank at least as far as the last found
            # (inf where the scan found fewer than asked: none left out).
            unsure = unsure[unsure_queries(space, dist[unsure], ranking[unsure, -1],
                                           error[unsure])]
        for row in unsure:
            cols = self._probed_rows(probes[row])
            dist[row], ind[row] = rerank(space, q[row : row + 1], cols[None, :], k)
        return dist, ind

    def _probe_knn_exact(self, q, k, probes):
        """Top-``k`` among the probed rows for metrics ranked by exact distances."""
        space, fitted = self._space, self._space.fitted
        dist = np.full((len(q), k), np.inf)
        ind = np.full((len(q), k), -1, dtype=np.intp)
        for lo, hi, qi in self._by_cluster(probes):
            D = space.block_values(q[qi], fitted.block[lo:hi])
            cols = np.broadcast_to(np.arange(lo, hi), D.shape)
            # Ties by row number of the fitted data, not by stored position.
            d, i = _sorted_topk(D, cols, min(k, hi - lo), tie_key=space.to_ids)
            dist[qi], ind[qi] = _sorted_topk(np.hstack([dist[qi], d]), np.hstack([ind[qi], i]),
                                             k, tie_key=space.to_ids)
        return dist, ind

    def _probe_radius(self, q, radius, probes):
        fitted = self._space.fitted
        found = [(np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp), np.empty(0))]
        for lo, hi, qi in self._by_cluster(probes):
            x_sq = None if fitted.sq is None else fitted.sq[lo:hi]
            r, c, d = block_within(
                self._space, q[qi], fitted.block[lo:hi], x_sq, fitted.data[lo:hi], radius
            )
            found.append((qi[r], lo + c, d))
        qi, i, dist = (np.concatenate(part) for part in zip(*found))
        order = np.lexsort((i, qi))
        return _split_rows(len(q), qi[order], i[order], dist[order])
