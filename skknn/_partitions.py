"""How ClusterFilteredKNN splits the fitted points: k-NN graph, METIS, principal components.

The graph partition (Neural LSH's recipe) needs the k-nearest-neighbour
graph of the fitted points; the learned router reads principal components.
Both are built here from the ranking rows of a
:class:`~skknn._metrics.Space`; the estimator keeps what they return.
"""

import importlib.util

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.decomposition import PCA
from sklearn.utils import gen_batches

from ._indexes import IVFIndex, import_optional
from ._keras import draw_seed, fit_scaling
from ._kernels import in_slices
from ._metrics import resolve_metric
from ._search import drop_self, exact_kneighbors, rerank, stack_parts

# Fitted points up to which the k-NN graph (METIS's input and the router's
# soft labels) is exact. Beyond, it is approximate: principal components of
# the ranking rows (fitted on a sample of at most _PCA_SAMPLE rows) searched
# by an inverted file for _GRAPH_CANDIDATES candidates per neighbour,
# re-ranked exactly. Measured on Fashion-MNIST (60k x 784, 10 neighbours, 2
# cores): 2.0-2.2 s (5.1-5.2 s while the inverted file's k-means++ ran on
# all of its sample; 100k x 128 rows on one thread: 5.5-6 s against 14 s).
# METIS on that earlier graph cut 29.3% of 10-NN pairs, against 29.6% on the
# exact graph (77 s to build).
_EXACT_GRAPH_UP_TO = 20_000
_GRAPH_COMPONENTS = 128
_GRAPH_CANDIDATES = 3
_PCA_SAMPLE = 20_000
# Rows projected at once.
_BATCH = 8192


def exact_graph(n_samples):
    """Whether :func:`neighbor_graph` is exact for this many fitted points."""
    return n_samples <= _EXACT_GRAPH_UP_TO


def principal_codes(B, train_rows, rng):
    """Principal components of ranking rows ``B``, and the codes of all rows.

    Fitted on (a sample of) the training rows, after standardising them: the
    rows of the metrics ranked by exact distances are the data as given,
    whose squares may overflow.

    Returns
    -------
    offset, axes : ndarrays
        ``project(B, axes, offset)`` gives the codes (``axes`` float64, of
        shape ``(n_features, n_components)``, components by decreasing
        variance).
    codes : ndarray of shape (n_samples, n_components), float32
    """
    sample = train_rows
    if len(sample) > _PCA_SAMPLE:
        sample = np.sort(rng.choice(train_rows, _PCA_SAMPLE, replace=False))
    n_components = min(_GRAPH_COMPONENTS, B.shape[1], len(sample))
    mean, scale = fit_scaling(B[sample])
    pca = PCA(n_components, random_state=draw_seed(rng))
    with np.errstate(divide="ignore", invalid="ignore"):  # constant rows: no variance
        pca.fit((B[sample] - mean) / scale)
    # (B - offset) @ axes = ((B - mean) / scale - pca.mean_) @ components.T
    offset = mean + scale * pca.mean_
    axes = pca.components_.T / scale
    codes = np.empty((len(B), n_components), dtype=np.float32)
    for rows in gen_batches(len(B), _BATCH):
        codes[rows] = project(B[rows], axes, offset)
    return offset, axes, codes


def project(B, axes, offset):
    """``(B - offset) @ axes`` as float32, computed in float32 for float32
    rows (float64 for float64 rows, or axes beyond float32's range)."""
    dtype = np.float32 if B.dtype == np.float32 and np.abs(axes).max() < 2.0**100 \
        else np.float64
    with np.errstate(over="ignore", invalid="ignore"):
        Z = (B.astype(dtype, copy=False) - offset.astype(dtype)) @ axes.astype(dtype)
        return Z.astype(np.float32, copy=False)


def neighbor_graph(space, m, codes, n_jobs, rng):
    """The ``m`` nearest fitted rows of each fitted row of ``space`` (itself excluded).

    Exact up to ``_EXACT_GRAPH_UP_TO`` rows; beyond, candidates from an
    inverted file over the principal-component ``codes``, re-ranked exactly.
    Returns stored positions, shape ``(n_samples, m)`` (-1 where fewer were
    found), nearest first.
    """
    n = len(space.fitted)
    if exact_graph(n):
        found = exact_kneighbors(space, space.fitted, m + 1, n_jobs=n_jobs)
        return drop_self(*found, np.arange(n))[1]
    index = IVFIndex(resolve_metric("euclidean"), n_jobs, draw_seed(rng)).build(codes)

    def one(rows):
        candidates = index.query(codes[rows], _GRAPH_CANDIDATES * m + 1, 1)
        return rerank(space, space.fitted[rows], candidates, m + 1)

    graph = np.empty((n, m), dtype=np.intp)
    for batch in gen_batches(n, _BATCH):
        found = stack_parts(in_slices(
            lambda rows, b=batch: one(slice(b.start + rows.start, b.start + rows.stop)),
            batch.stop - batch.start, n_jobs,
        ))
        graph[batch] = drop_self(*found, np.arange(batch.start, batch.stop))[1]
    return graph


def metis_parts(pymetis, A, n_parts, seed, vweights=None, eweights=False):
    """METIS's part of each vertex of the graph of edges ``A`` (sparse, made
    symmetric here; with ``eweights``, the summed edges weigh what they count)."""
    A = (A + A.T).tocsr()
    A.setdiag(0)
    A.eliminate_zeros()
    A.sort_indices()
    options = pymetis.Options(seed=seed % 2**31)
    if hasattr(pymetis, "CSRAdjacency"):  # pymetis >= 2025.2
        graph_arg = {"adjacency": pymetis.CSRAdjacency(A.indptr, A.indices)}
    else:
        graph_arg = {"xadj": A.indptr, "adjncy": A.indices}
    if vweights is not None:
        graph_arg["vweights"] = list(vweights)
    if eweights:
        graph_arg["eweights"] = A.data.astype(np.int64).tolist()
    # Recursive bisection, not k-way (pymetis' choice beyond 8 parts): on a
    # 10-NN graph of 90k embedding-like rows into 317 parts, k-way cut
    # 0.29-0.34 of the edges for 25 of 30 seeds and 0.53-0.56 for the other
    # 5 (ClusterFilteredKNN then needed 1.7-2.9x the candidates at equal
    # recall), in 1.1-1.4 s; recursive bisection cut 0.300-0.304 for all
    # 30, in 0.7 s, with parts more even.
    return pymetis.part_graph(n_parts, options=options, recursive=True, **graph_arg)[1]


def metis_labels(graph, train_rows, n_samples, n_parts, seed):
    """Balanced parts of the training rows' k-NN graph (METIS), for every row.

    Only edges between training rows count, so the held-out rows that
    ``recall_`` is measured on do not shape the parts; they join the part
    most of their neighbours are in, as a new point would. Parts METIS left
    empty (tiny or disconnected graphs) are dropped: labels number the parts
    used, ``0 .. n - 1``.
    """
    pymetis = import_optional("pymetis", "graph", "partition='graph'")
    n = n_samples
    if n_parts == 1 or graph is None:
        return np.zeros(n, dtype=np.intp)
    position = np.full(n, -1, dtype=np.intp)
    position[train_rows] = np.arange(len(train_rows))
    neighbors = graph[train_rows]
    to = position[np.maximum(neighbors, 0)]
    keep = (neighbors >= 0) & (to >= 0)
    frm = np.broadcast_to(np.arange(len(train_rows))[:, None], neighbors.shape)
    A = csr_matrix((np.ones(keep.sum(), dtype=np.int8), (frm[keep], to[keep])),
                   shape=(len(train_rows),) * 2)
    parts = metis_parts(pymetis, A, n_parts, seed)
    labels = np.full(n, -1, dtype=np.intp)
    labels[train_rows] = np.asarray(parts, dtype=np.intp)
    held_out = np.flatnonzero(labels < 0)
    if len(held_out):
        votes = np.zeros((len(held_out), n_parts))
        their = labels[np.maximum(graph[held_out], 0)]
        rows, cols = np.nonzero((graph[held_out] >= 0) & (their >= 0))
        np.add.at(votes, (rows, their[rows, cols]), 1.0)
        labels[held_out] = votes.argmax(axis=1)
    return np.unique(labels, return_inverse=True)[1].astype(np.intp)


def given_labels(partition, n_samples, n_clusters):
    """The cluster ids passed as ``partition``, checked; None for a method name."""
    if isinstance(partition, str):
        return None
    labels = np.asarray(partition)
    if labels.shape != (n_samples,) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"partition given as labels must be integers of shape (n_samples,) = "
            f"({n_samples},), got dtype {labels.dtype} and shape {labels.shape}."
        )
    if labels.min() < 0 or len(np.unique(labels)) != labels.max() + 1:
        raise ValueError(
            "partition labels must number the clusters 0 .. n_clusters - 1 with every "
            "cluster used (np.unique(labels, return_inverse=True)[1] renumbers them)."
        )
    if n_clusters is not None and n_clusters != labels.max() + 1:
        raise ValueError(
            f"n_clusters={n_clusters} but the given partition has "
            f"{labels.max() + 1} clusters; leave n_clusters=None."
        )
    return labels.astype(np.intp)


def chosen_partition(partition, given, router):
    """The partition method used: 'given' for labels, 'auto' resolved."""
    if given is not None:
        return "given"
    if partition == "auto":
        available = importlib.util.find_spec("pymetis") is not None
        return "graph" if router == "mlp" and available else "kmeans"
    return partition
