"""Whole clusters of rows placed on shards, and queries sent only to the shards of their clusters.

Used by ``ShardedNeighbors(placement='clusters')``. Coarse k-means centres
are fitted on a sample of the rows; METIS groups the centres into one
balanced group per shard, cutting as few of the sample's k-NN edges as it
can, so that a row and its neighbours tend to share a shard. Every row goes
to the shard of its nearest centre. A query visits the shards of its
``n_probe`` nearest centres; with every centre probed it visits every shard.
The rows a query's neighbours are missed on count in the sharded search's
measured ``recall_``, which picks ``n_probe``.
"""

import numpy as np
from scipy.sparse import csr_matrix, issparse
from sklearn.utils import gen_batches
from sklearn.utils.extmath import row_norms, safe_sparse_dot

from ._indexes import import_optional
from ._partitions import metis_parts

# At least this many sample rows per centre.
_ROWS_PER_CENTRE = 20
_MAX_CENTRES = 128
# The graph METIS cuts: the nearest sample rows of up to this many of them.
_GRAPH_NEIGHBORS = 10
_GRAPH_ROWS = 5000
_BATCH = 8192
# Nearest centres found by passes of argmin up to this many (else a partition).
_FEW = 8


def _smallest(d, n):
    """The columns of the ``n`` smallest of each row of ``d``, smallest first;
    ``d`` is overwritten."""
    if n <= _FEW and np.isfinite(d).all():
        # A few passes of argmin, each hiding the column it found: faster
        # than a partition and a sort of every row (2 of 128 columns, 8,192
        # rows: 1.4-2.0 ms, against 5.7-7.5 ms for the partition alone).
        out, every = np.empty((len(d), n), dtype=np.intp), np.arange(len(d))
        for j in range(n):
            out[:, j] = d.argmin(axis=1)
            d[every, out[:, j]] = np.inf
        return out
    # (With an infinite or NaN distance, hiding by inf could pick a column twice.)
    near = None
    if n < d.shape[1]:
        near = np.argpartition(d, n - 1, axis=1)[:, :n]
        d = np.take_along_axis(d, near, 1)
    order = np.argsort(d, axis=1, kind="stable")
    return order if near is None else np.take_along_axis(near, order, 1)


def probe_grid(n_centres):
    """Numbers of centres a query may probe, increasing, ending with all of them."""
    grid = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96]
    return [p for p in grid if p < n_centres] + [n_centres]


class ShardRouter:
    """Coarse centres, the shard each is placed on, and the fitted rows of each shard.

    Rows are compared with the centres after the sample's offset and scale
    are taken off (unit rows first for the cosine metric), in float64: far
    offsets and extreme scales do not reach the ranking. Sparse rows stay
    sparse: their offset is taken off after the product.
    """

    def __init__(self, centres, shard_of_centre, n_shards, offset, scale, normalize):
        self.centres = centres
        self.centres_sq = row_norms(centres, squared=True)
        # Rows are ranked by |c|^2 - 2 (x - offset) . c / scale: the scale
        # is folded into the centres.
        self._axes = (centres * (2.0 / scale)).T
        self.shard_of_centre = shard_of_centre
        self.offset, self.scale, self.normalize = offset, scale, normalize
        self.n_shards = n_shards
        self.shard_rows = None  # set by set_rows

    @property
    def n_centres(self):
        return len(self.centres)

    def _centre_products(self, X):
        """``2 (x - offset) . c / scale`` for each row ``x`` of ``X`` and centre ``c``."""
        if issparse(X):
            X = X.astype(np.float64)
            if self.normalize:
                norms = np.sqrt(row_norms(X, squared=True))
                X = csr_matrix(X.multiply(1.0 / np.where(norms > 0, norms, 1.0)[:, None]))
            # The offset is taken off after the product, keeping X sparse.
            return safe_sparse_dot(X, self._axes, dense_output=True) - self.offset @ self._axes
        if self.normalize:
            X = np.asarray(X, dtype=np.float64)
            norms = np.sqrt(row_norms(X, squared=True))
            X = X / np.where(norms > 0, norms, 1.0)[:, None]
        # One pass makes the float64 copy and takes the offset off.
        return np.subtract(X, self.offset, dtype=np.float64) @ self._axes

    def nearest_centres(self, X, n):
        """The ``n`` nearest centres of each row of ``X``, nearest first."""
        n = min(n, self.n_centres)
        out = np.empty((X.shape[0], n), dtype=np.intp)
        for rows in gen_batches(X.shape[0], _BATCH):
            # The row's own squared norm is the same for every centre.
            d = self.centres_sq - self._centre_products(X[rows])
            out[rows] = _smallest(d, n)
        return out

    def visits(self, X, n_probe):
        """Whether each row of ``X`` visits each shard, probing ``n_probe`` centres."""
        n_rows = X.shape[0]
        if n_probe >= self.n_centres:
            return np.ones((n_rows, self.n_shards), dtype=bool)
        shards = self.shard_of_centre[self.nearest_centres(X, n_probe)]
        visit = np.empty((n_rows, self.n_shards), dtype=bool)
        for shard in range(self.n_shards):
            np.any(shards == shard, axis=1, out=visit[:, shard])
        return visit

    def shard_of(self, X):
        """The shard of each row of ``X``: that of its nearest centre."""
        return self.shard_of_centre[self.nearest_centres(X, 1)[:, 0]]

    def set_rows(self, shard_of_row):
        """Record each shard's rows (ascending), from the shard of every fitted row."""
        order = np.argsort(shard_of_row, kind="stable")
        bounds = np.searchsorted(shard_of_row[order], np.arange(self.n_shards + 1))
        self.shard_rows = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def fit_router(sample, n_shards, seed, normalize=False):
    """A :class:`ShardRouter` whose centres are fitted on ``sample`` rows (dense)."""
    from sklearn.cluster import KMeans

    S = np.asarray(sample, dtype=np.float64)
    if normalize:
        norms = np.sqrt(row_norms(S, squared=True))
        S = S / np.where(norms > 0, norms, 1.0)[:, None]
    offset = S.mean(axis=0)
    scale = float(np.abs(S - offset).max())
    scale = scale if np.isfinite(scale) and scale > 0 else 1.0
    S = (S - offset) / scale
    n_distinct = len(np.unique(S, axis=0))
    n_centres = max(n_shards, min(_MAX_CENTRES, len(S) // _ROWS_PER_CENTRE))
    if n_distinct < n_shards:
        raise ValueError(
            f"placement='clusters' needs at least n_shards={n_shards} distinct rows in its "
            f"sample of {len(S)}, got {n_distinct}; use placement='rows'."
        )
    kmeans = KMeans(min(n_centres, n_distinct), n_init=1, random_state=seed).fit(S)
    labels = kmeans.labels_
    sizes = np.bincount(labels, minlength=kmeans.n_clusters)
    groups = _group_centres(S, labels, sizes, n_shards, seed)
    return ShardRouter(kmeans.cluster_centers_, groups, n_shards, offset, scale, normalize)


def _group_centres(S, labels, sizes, n_shards, seed):
    """A shard for each centre: balanced in sample rows, cutting few k-NN edges (METIS)."""
    n_centres = len(sizes)
    if n_shards == 1:
        return np.zeros(n_centres, dtype=np.intp)
    pymetis = import_optional("pymetis", "graph", "placement='clusters'")
    from sklearn.neighbors import NearestNeighbors

    m = min(_GRAPH_NEIGHBORS, len(S) - 1)
    rows = np.random.RandomState(seed).permutation(len(S))[:_GRAPH_ROWS]
    # (The first neighbour found is the row itself.)
    neighbors = NearestNeighbors(n_neighbors=m + 1).fit(S).kneighbors(S[rows])[1][:, 1:]
    A = csr_matrix((np.ones(neighbors.size),
                    (np.repeat(labels[rows], m), labels[neighbors].ravel())),
                   shape=(n_centres, n_centres))
    parts = metis_parts(pymetis, A, n_shards, seed, vweights=sizes.tolist(), eweights=True)
    groups = np.asarray(parts, dtype=np.intp)
    if len(np.unique(groups)) < n_shards:
        # METIS may leave a part empty on a tiny or disconnected graph: the
        # largest centres first, each to the lightest shard.
        groups, load = np.empty(n_centres, dtype=np.intp), np.zeros(n_shards)
        for c in np.argsort(-sizes, kind="stable"):
            groups[c] = load.argmin()
            load[groups[c]] += sizes[c]
    return groups
