"""Candidate indexes: where LearnedNeighbors looks for candidates among codes.

Every index has the same small interface: built on the fitted codes (with
the estimator's threads), asked for ``n`` candidates of each query code
(``query(Zq, n, n_jobs)``: the estimator runs slices of queries side by side
and asks each for one thread), pickled with the estimator. The
effort knob stays ``candidates_per_neighbor`` (so ``target_recall`` walks one
grid whatever the index): each index turns ``n`` into its own search effort.
Optional libraries are imported when an index is built, and a missing one is
an ImportError naming the extra that installs it.
"""

import math

import numpy as np

from ._kernels import scan_cells
from ._metrics import inlier_rows
from ._search import block_topk

# pynndescent's search slack (its query ``epsilon``) and graph degree.
_NNDESCENT_EPSILON = 0.1
_NNDESCENT_DEGREE = 30
# hnswlib's and usearch's graph degree and construction effort (hnswlib's
# defaults are 16, 200).
_HNSW_M = 16
_HNSW_EF_CONSTRUCTION = 200
# Annoy's trees, and the nodes it inspects per requested candidate per tree.
_ANNOY_TREES = 16
_ANNOY_SEARCH_PER_TREE = 2
# The inverted file: about sqrt(n) k-means cells, fitted on at most this many
# codes per cell in at most this many Lloyd iterations; a query scans the
# nearest cells until it has seen this many codes per candidate it returns.
# Measured on the autoencoder's Fashion-MNIST codes (60k x 128, 245 cells,
# 10k queries, 2 threads): 40 candidates in 82 ms, candidate recall@10 0.982;
# hnswlib (M=16) the same recall with 30 candidates in 114 ms.
# k-means++ seeds the cells from a smaller sample: it was most of the build
# (5.7 of 10 s at 100k x 128 codes, 316 cells, one thread). Measured with 2
# threads, 10k queries, recall@10 of 40 candidates (3 seeds): Fashion-MNIST's
# 128 principal components 4.2 -> 1.0 s, 0.9897 -> 0.9896; 200k x 128
# embedding-like rows 14.3 -> 3.4 s, 0.9532 -> 0.9548 (k-means++ on 64 codes
# per cell with no smaller seeding sample: 0.9880 and 0.9472).
_IVF_SAMPLE_PER_CELL = 128
_IVF_SEED_SAMPLE_PER_CELL = 16
_IVF_KMEANS_ITER = 20
_IVF_SCAN_PER_CANDIDATE = 40
_PYNNDESCENT_METRICS = {
    "euclidean": "euclidean",
    "sqeuclidean": "euclidean",
    "cosine": "euclidean",  # the indexed rows are unit-normalised
    "manhattan": "manhattan",
    "chebyshev": "chebyshev",
    "minkowski": "minkowski",
}
# hnswlib's spaces; rows of cosine searches are unit-normalised already.
_HNSW_SPACES = {"euclidean": "l2", "sqeuclidean": "l2", "cosine": "l2"}


def import_optional(module, extra, purpose=None):
    """Import an optional dependency, or raise an ImportError naming its extra.

    ``purpose`` says what needs it (default: ``backend=<extra>``).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        purpose = purpose or f"backend={extra!r}"
        raise ImportError(
            f"{purpose} needs the optional package {module!r}: install it with "
            f"pip install 'skknn[{extra}]' (or pip install {module})."
        ) from exc


class BruteIndex:
    """Top-``n`` codes by Euclidean distance, one matrix product per query chunk.

    Codes are always compared with the Euclidean distance (the passthrough
    brute-force setting is the estimator's exact search, not this index).
    """

    def __init__(self, metric, n_jobs=1, seed=0, verbose=0):
        self.n_jobs = n_jobs

    def build(self, Z):
        # Centred, as in IVFIndex: the ranking uses |z|^2 - 2 q.z in float32.
        self._offset = _code_centre(Z)
        self._Z = _centred(Z, self._offset)
        self._sqnorm = np.einsum("ij,ij->i", self._Z, self._Z)
        return self

    def query(self, Zq, n, n_jobs=1):
        return block_topk(_centred(Zq, self._offset), self._Z, n, self._sqnorm, n_jobs)[1]


def _sample_rows(Z, n, rng):
    """At most ``n`` rows of ``Z``, drawn without replacement (all of them if fewer)."""
    return Z if len(Z) <= n else Z[rng.choice(len(Z), n, replace=False)]


class IVFIndex:
    """An inverted file over the codes: k-means cells, the nearest ones scanned.

    The codes are stored centred, cell after cell; a compiled kernel ranks
    the cell centres for the queries, then multiplies each cell's codes with
    the queries probing it and keeps each query's ``n`` nearest (a sorted
    list, or a cut buffer for large ``n``). Building costs one small k-means
    (a second or two at 60k codes), and nothing is compiled at fit:
    the kernel loads with the re-ranking kernel.
    """

    def __init__(self, metric, n_jobs=1, seed=0, verbose=0):
        _check_euclidean_family(metric, "ivf")
        self.n_jobs, self.seed = n_jobs, seed

    def build(self, Z):
        from sklearn.cluster import KMeans, kmeans_plusplus

        n_codes = len(Z)
        n_cells = max(1, min(n_codes, round(math.sqrt(n_codes))))
        rng = np.random.RandomState(self.seed)
        # Centred codes: the scan ranks them by |z|^2 - 2 q.z in float32,
        # which loses every digit for codes far from the origin.
        self._offset = _code_centre(Z)
        Z = _centred(Z, self._offset)
        # float64: scikit-learn's k-means++ is many times slower on float32.
        sample = _sample_rows(Z, _IVF_SAMPLE_PER_CELL * n_cells, rng).astype(np.float64)
        seeds, _ = kmeans_plusplus(
            _sample_rows(sample, _IVF_SEED_SAMPLE_PER_CELL * n_cells, rng), n_cells,
            random_state=rng,
        )
        kmeans = KMeans(n_cells, init=seeds, n_init=1, max_iter=_IVF_KMEANS_ITER)
        kmeans.fit(sample)
        centres = kmeans.cluster_centers_.astype(np.float32)
        labels = block_topk(Z, centres, 1, n_jobs=self.n_jobs)[1][:, 0]
        self._rows = np.argsort(labels, kind="stable")
        self._codes = np.ascontiguousarray(Z[self._rows])
        self._codes_sq = np.einsum("ij,ij->i", self._codes, self._codes)
        self._starts = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=n_cells))])
        self._centres = centres
        self._centres_sq = np.einsum("ij,ij->i", centres, centres)
        self._mean_cell = n_codes / n_cells
        return self

    def n_probe(self, n):
        """Cells scanned for ``n`` candidates."""
        wanted = math.ceil(_IVF_SCAN_PER_CANDIDATE * n / self._mean_cell)
        return int(min(len(self._centres), max(1, wanted)))

    def query(self, Zq, n, n_jobs=1):
        Zq = _centred(Zq, self._offset)
        # The centres are ranked by the same kernel, as one cell that every
        # query probes (5x faster than a matrix product and argpartition).
        every_centre = np.array([0, len(self._centres)])
        probes = scan_cells(Zq, self._centres, self._centres_sq, every_centre,
                            np.zeros((len(Zq), 1), dtype=np.intp), self.n_probe(n), n_jobs)
        pos = scan_cells(Zq, self._codes, self._codes_sq, self._starts, probes, n, n_jobs)
        return np.where(pos >= 0, self._rows[np.maximum(pos, 0)], -1)


class NNDescentIndex:
    """A pynndescent k-NN graph, searched with ``epsilon`` slack."""

    def __init__(self, metric, n_jobs=1, seed=0, verbose=0):
        self.metric, self.n_jobs, self.seed, self.verbose = metric, n_jobs, seed, verbose

    def build(self, Z):
        from pynndescent import NNDescent

        self._index = NNDescent(
            Z,
            metric=_PYNNDESCENT_METRICS[self.metric.name],
            metric_kwds=self.metric.sklearn_params or None,
            n_neighbors=min(_NNDESCENT_DEGREE, Z.shape[0] - 1),
            random_state=self.seed,
            n_jobs=self.n_jobs,
            verbose=self.verbose >= 2,
        )
        self._index.prepare()
        return self

    def query(self, Zq, n, n_jobs=1):
        # pynndescent searches its queries one after another, whatever n_jobs.
        ind, dist = self._searcher().query(Zq, k=n, epsilon=_NNDESCENT_EPSILON)
        return _valid_candidates(ind, dist)

    def _searcher(self):
        """The index with scratch space of its own, for one call.

        pynndescent keeps on the index what every query call writes: a
        visited-node bitset, a result heap per batch size (0.7) and the
        random state. Slices of queries searched side by side by threads
        wrote into each other's heaps (19 of 20 two-thread calls differed
        from one call). A shallow copy gets its own; ``copy.copy`` would go
        through pynndescent's pickling.
        """
        index = object.__new__(type(self._index))
        index.__dict__.update(self._index.__dict__)
        if hasattr(index, "_visited"):
            index._visited = np.zeros_like(index._visited)
        if hasattr(index, "search_rng_state"):
            index.search_rng_state = index.search_rng_state.copy()
        index._query_workspace = None
        return index


class HnswIndex:
    """An HNSW graph (hnswlib); the query's ``ef`` is the number of candidates."""

    def __init__(self, metric, n_jobs=1, seed=0, verbose=0):
        _check_euclidean_family(metric, "hnswlib")
        self.metric, self.n_jobs, self.seed = metric, n_jobs, seed

    def build(self, Z):
        hnswlib = import_optional("hnswlib", "hnswlib")
        self._index = hnswlib.Index(space=_HNSW_SPACES[self.metric.name], dim=Z.shape[1])
        self._index.init_index(len(Z), M=_HNSW_M, ef_construction=_HNSW_EF_CONSTRUCTION,
                               random_seed=self.seed)
        self._index.add_items(np.asarray(Z, dtype=np.float32), num_threads=self.n_jobs)
        return self

    def query(self, Zq, n, n_jobs=1):
        self._index.set_ef(max(n, 1))
        try:
            labels, _ = self._index.knn_query(np.asarray(Zq, dtype=np.float32), k=n,
                                              num_threads=n_jobs)
        except RuntimeError:
            # hnswlib raises when some query's search ends with fewer than n
            # points; those queries then go to the estimator's exact fallback.
            return np.full((len(Zq), n), -1, dtype=np.intp)
        return labels.astype(np.intp)


class UsearchIndex:
    """An HNSW graph by usearch; the query's expansion is the number of candidates."""

    def __init__(self, metric, n_jobs=1, seed=0, verbose=0):
        _check_euclidean_family(metric, "usearch")
        self.n_jobs = n_jobs

    def build(self, Z):
        self._index = self._new(Z.shape[1])
        self._index.add(np.arange(len(Z)), np.asarray(Z, dtype=np.float32),
                        threads=self.n_jobs)
        return self

    @staticmethod
    def _new(n_components):
        usearch_index = import_optional("usearch.index", "usearch")
        return usearch_index.Index(ndim=n_components, metric="l2sq", dtype="f32",
                                   connectivity=_HNSW_M, expansion_add=_HNSW_EF_CONSTRUCTION)

    def query(self, Zq, n, n_jobs=1):
        self._index.expansion_search = max(n, 1)
        found = self._index.search(np.asarray(Zq, dtype=np.float32), n, threads=n_jobs)
        keys = np.asarray(found.keys, dtype=np.intp).reshape(len(Zq), -1)
        # Slots past a query's found count hold no neighbour.
        counts = np.asarray(found.counts).reshape(-1, 1)
        return np.where(np.arange(keys.shape[1]) < counts, keys, -1)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_index"] = (self._index.ndim, bytes(self._index.save()))
        return state

    def __setstate__(self, state):
        n_components, saved = state["_index"]
        state["_index"] = self._new(n_components)
        state["_index"].load(bytearray(saved))
        self.__dict__.update(state)


class AnnoyIndex:
    """Annoy's random projection trees (the index of the original write-up)."""

    def __init__(self, metric, n_jobs=1, seed=0, verbose=0):
        _check_euclidean_family(metric, "annoy")
        self.n_jobs, self.seed = n_jobs, seed

    def build(self, Z):
        self._codes = np.asarray(Z, dtype=np.float32)
        self._index = self._build(self._codes)
        return self

    def _build(self, Z):
        annoy = import_optional("annoy", "annoy")
        index = annoy.AnnoyIndex(Z.shape[1], "euclidean")
        index.set_seed(self.seed % 2**31)
        for row, code in enumerate(Z):
            index.add_item(row, code)
        index.build(_ANNOY_TREES, n_jobs=self.n_jobs)
        return index

    def query(self, Zq, n, n_jobs=1):
        search_k = n * _ANNOY_TREES * _ANNOY_SEARCH_PER_TREE
        out = np.full((len(Zq), n), -1, dtype=np.intp)
        for i, code in enumerate(np.asarray(Zq, dtype=np.float64)):
            found = self._index.get_nns_by_vector(code, n, search_k=search_k)
            out[i, : len(found)] = found
        return out

    def __getstate__(self):
        # An Annoy index pickles as its codes; loading rebuilds the same trees
        # (same seed), which takes well under a second per 100k codes.
        state = self.__dict__.copy()
        del state["_index"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._index = self._build(self._codes)


def _code_centre(Z):
    """The mean code, of the codes that are not far outliers (see
    :func:`._metrics.inlier_rows`): an outlier's code (1e11 among codes ~1)
    would move the mean so far that float32 codes centred on it all round
    to the same values."""
    inliers = inlier_rows(Z)
    return (Z if inliers is None else Z[inliers]).mean(axis=0, dtype=np.float64)


def _centred(Z, offset):
    """Float32 codes minus ``offset``, subtracted in the codes' own precision.

    Float32 codes get the same rounded offset as their queries, and no
    float64 copy of them all is made.
    """
    return np.subtract(Z, offset.astype(Z.dtype), dtype=Z.dtype).astype(np.float32, copy=False)


def _check_euclidean_family(metric, backend):
    if metric.name not in _HNSW_SPACES:
        raise ValueError(
            f"backend={backend!r} searches the Euclidean family and cosine, not "
            f"metric={metric.name!r}: use backend='pynndescent' or an embedder."
        )


#: The candidate indexes by ``backend`` name.
INDEXES = {
    "brute": BruteIndex,
    "ivf": IVFIndex,
    "pynndescent": NNDescentIndex,
    "hnswlib": HnswIndex,
    "usearch": UsearchIndex,
    "annoy": AnnoyIndex,
}


def _valid_candidates(ind, dist):
    """Mark unfilled pynndescent result slots as missing (-1).

    When its search ends before finding ``k`` points, pynndescent pads the
    result with a repeated index at infinite distance; re-ranking those would
    return one point several times.
    """
    ind = np.where(np.isfinite(dist), ind, -1).astype(np.intp)
    order = np.argsort(ind, axis=1, kind="stable")
    sorted_ind = np.take_along_axis(ind, order, axis=1)
    repeated = np.zeros_like(sorted_ind, dtype=bool)
    repeated[:, 1:] = sorted_ind[:, 1:] == sorted_ind[:, :-1]
    np.put_along_axis(ind, order, np.where(repeated, -1, sorted_ind), axis=1)
    return ind
