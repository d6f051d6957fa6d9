"""The learned router of ClusterFilteredKNN: what it learns, its weights, and
which clusters a query probes from them."""

import numpy as np

from ._keras import import_keras, share_crossentropy
from ._kernels import order_by_mass
from ._search import _sorted_topk

# Clusters picked one by one when probing by probability mass; the rare
# queries that need more get all clusters sorted.
_MASS_WIDTH = 32
# Up to this many (training row, cluster) pairs the router's targets are
# dense shares; beyond, each row's neighbours' clusters (m ids a row).
_DENSE_TARGETS_UP_TO = 2**22


def neighbour_clusters(graph, rows, labels):
    """The router's training targets: the cluster (``labels`` of the fitted
    rows) of each graph neighbour of ``rows``, -1 where a row has fewer.

    A row's target is the share of its neighbours in each cluster
    (:func:`~skknn._keras.share_crossentropy` reads it from these ids): ``m``
    ids a row rather than ``n_clusters`` shares, which a router of 448
    clusters on 180k rows would hold in 323 MB (and copy every epoch).
    Returned as float32, as Keras hands targets to a loss (exact for ids
    below 2**24).
    """
    neighbors = graph[rows]
    ids = np.where(neighbors >= 0, labels[np.maximum(neighbors, 0)], -1)
    return ids.astype(np.float32)


def cluster_shares(ids, n_clusters):
    """Dense targets from :func:`neighbour_clusters`' ``ids``: the share of
    each row's ids in each cluster (zeros for a row without any)."""
    shares = np.zeros((len(ids), n_clusters), dtype=np.float32)
    valid = ids >= 0
    r, c = np.nonzero(valid)
    np.add.at(shares, (r, ids[r, c].astype(np.intp)), 1.0)
    shares /= np.maximum(valid.sum(axis=1), 1)[:, None]
    return shares


def router_targets(graph, rows, labels, n_clusters):
    """The router's training targets for ``rows``, and their Keras loss.

    Up to ``_DENSE_TARGETS_UP_TO`` (row, cluster) pairs, the dense shares
    with Keras' cross-entropy, which compiles faster (a fit of 600 rows took
    0.83 s, against 1.02 s with the ids); beyond, the ids of
    :func:`neighbour_clusters` with :func:`~skknn._keras.share_crossentropy`.
    """
    ids = neighbour_clusters(graph, rows, labels)
    if len(ids) * n_clusters > _DENSE_TARGETS_UP_TO:
        return ids, share_crossentropy
    loss = import_keras().losses.CategoricalCrossentropy(from_logits=True)
    return cluster_shares(ids, n_clusters), loss


def softmax_weights(logits, lost):
    """The probabilities of ``logits`` times a positive factor per row (``exp``
    of the logits minus their maximum, in place), their row sums, and the rows
    that cannot be ranked: ``lost`` ones (e.g. beyond the training data's
    range) and overflowing ones, given uniform weights."""
    W = logits
    with np.errstate(over="ignore", invalid="ignore"):
        W -= W.max(axis=1, keepdims=True)
        np.exp(W, out=W)
        # Every weight is in [0, 1] with a 1 in the row, or the row has a
        # NaN and so has its sum.
        total = W.sum(axis=1, dtype=np.float64)
    lost = lost | ~np.isfinite(total)
    W[lost], total[lost] = 1.0, W.shape[1]
    return W, total, lost


def padded(probes, width):
    """``probes`` with -1 columns appended up to ``width`` (as it is if wider)."""
    missing = width - probes.shape[1]
    return np.pad(probes, ((0, 0), (0, missing)), constant_values=-1) if missing > 0 else probes


def stack_padded(parts):
    """Probes of query batches stacked, each padded with -1 to the widest."""
    width = max(p.shape[1] for p in parts)
    return np.vstack([padded(p, width) for p in parts])


def probe_order(P, sizes, n_probe=None, mass=None, total=None):
    """Clusters to probe per query, best first, from the router's probabilities.

    Clusters are ranked by probability per fitted point (the neighbours a
    probe is expected to find per row it scans). With ``n_probe``: the
    ``n_probe`` best. With ``mass``: the best until their probabilities sum
    to ``mass`` (every cluster for ``mass >= 1``), -1 after. ``P`` may be
    the probabilities times ``total`` (its row sums), None: they sum to 1.
    """
    n_queries, n_clusters = P.shape
    # An empty cluster costs nothing to probe. In P's dtype: float32
    # probabilities divided by integer sizes would give float64 scores (a
    # pass 6x slower, and a kernel specialisation of its own).
    score = P / np.maximum(sizes, 1).astype(P.dtype)
    ids = np.broadcast_to(np.arange(n_clusters), P.shape)
    if mass is not None and mass >= 1:
        n_probe = n_clusters
    if n_probe is not None:
        return _sorted_topk(-score, ids, n_probe)[1]
    thresholds = mass * (np.ones(n_queries) if total is None else total)
    order, counts = order_by_mass(P, score, thresholds, min(_MASS_WIDTH, n_clusters))
    wide = np.flatnonzero(counts < 0)
    if len(wide):
        # The few queries that need more: every cluster ranked, then cut.
        full = _sorted_topk(-score[wide], ids[wide], n_clusters)[1]
        cum = np.cumsum(np.take_along_axis(P[wide], full, axis=1), axis=1, dtype=np.float64)
        counts[wide] = np.minimum((cum < thresholds[wide, None]).sum(axis=1) + 1, n_clusters)
        order = padded(order, counts.max())
        order[wide] = np.where(np.arange(order.shape[1]) < counts[wide, None],
                               full[:, : order.shape[1]], -1)
    return order[:, : counts.max(initial=1)]
