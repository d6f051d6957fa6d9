"""Candidate indexes: where LearnedNeighbors looks for candidates among codes.

Every index has the same small interface: built on the fitted codes, asked
for ``n`` candidates of each query code, pickled with the estimator. The
effort knob stays ``candidates_per_neighbor`` (so ``target_recall`` walks one
grid whatever the index): each index turns ``n`` into its own search effort.
Optional libraries are imported when an index is built, and a missing one is
an ImportError naming the extra that installs it.
"""

import numpy as np

from ._search import block_topk

# pynndescent's search slack (its query ``epsilon``) and graph degree.
_NNDESCENT_EPSILON = 0.1
_NNDESCENT_DEGREE = 30
# hnswlib's graph degree and construction effort (its defaults are 16, 200).
_HNSW_M = 16
_HNSW_EF_CONSTRUCTION = 200
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


def import_optional(module, extra):
    """Import an optional dependency, or raise an ImportError naming its extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"backend={extra!r} needs the optional package {module!r}: install it with "
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
        self._Z = Z
        self._sqnorm = np.einsum("ij,ij->i", Z, Z)
        return self

    def query(self, Zq, n):
        return block_topk(Zq, self._Z, n, self._sqnorm, self.n_jobs)[1]


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

    def query(self, Zq, n):
        ind, dist = self._index.query(Zq, k=n, epsilon=_NNDESCENT_EPSILON)
        return _valid_candidates(ind, dist)


class HnswIndex:
    """An HNSW graph (hnswlib); the query's ``ef`` is the number of candidates."""

    def __init__(self, metric, n_jobs=1, seed=0, verbose=0):
        if metric.name not in _HNSW_SPACES:
            raise ValueError(
                f"backend='hnswlib' searches the Euclidean family and cosine, not "
                f"metric={metric.name!r}: use backend='pynndescent' or an embedder."
            )
        self.metric, self.n_jobs, self.seed = metric, n_jobs, seed

    def build(self, Z):
        hnswlib = import_optional("hnswlib", "hnswlib")
        self._index = hnswlib.Index(space=_HNSW_SPACES[self.metric.name], dim=Z.shape[1])
        self._index.init_index(len(Z), M=_HNSW_M, ef_construction=_HNSW_EF_CONSTRUCTION,
                               random_seed=self.seed)
        self._index.add_items(np.asarray(Z, dtype=np.float32), num_threads=self.n_jobs)
        return self

    def query(self, Zq, n):
        self._index.set_ef(max(n, 1))
        try:
            labels, _ = self._index.knn_query(np.asarray(Zq, dtype=np.float32), k=n,
                                              num_threads=self.n_jobs)
        except RuntimeError:
            # hnswlib raises when some query's search ends with fewer than n
            # points; those queries then go to the estimator's exact fallback.
            return np.full((len(Zq), n), -1, dtype=np.intp)
        return labels.astype(np.intp)


#: The candidate indexes by ``backend`` name.
INDEXES = {"brute": BruteIndex, "pynndescent": NNDescentIndex, "hnswlib": HnswIndex}


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
