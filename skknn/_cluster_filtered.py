"""ClusterFilteredKNN: a learned router over clusters, exact search inside them."""

import math
from numbers import Integral

import numpy as np
from sklearn.base import _fit_context
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.utils import gen_batches
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._base import _QUERY_BATCH, SearchBase
from ._keras import (
    TRAINING_CONSTRAINTS,
    MLPWeights,
    apply_scaling,
    build_mlp,
    check_hidden_sizes,
    draw_seed,
    fit_scaling,
    import_keras,
    train,
    training_params,
)
from ._search import (
    _EXTRA_SELECTED,
    _query_batches,
    _sorted_topk,
    _split_rows,
    beyond_range,
    block_topk,
    block_within,
    drop_self,
    exact_kneighbors,
    max_sqnorm,
    rerank,
)

# Fitted points up to which plain KMeans partitions the data (MiniBatchKMeans
# beyond), and up to which the router's soft labels use the exact k-NN graph.
_FULL_KMEANS_UP_TO = 20_000
_EXACT_GRAPH_UP_TO = 20_000
# Share of clusters probed (by centroid) to build the approximate k-NN graph
# of larger data sets.
_GRAPH_PROBE_SHARE = 0.1


class ClusterFilteredKNN(SearchBase):
    """Nearest neighbours searched only in the clusters a router picks.

    A drop-in for :class:`sklearn.neighbors.NearestNeighbors`. The fitted
    points are partitioned by k-means; for each query, a router ranks the
    clusters and exact search runs only in the ``n_probe`` best ones. All
    queries that probe a cluster are searched against it with one distance
    computation, so work is batched by cluster, not looped per query.

    * ``router='centroid'`` probes the clusters with the nearest centres
      (an inverted-file index, the baseline).
    * ``router='mlp'`` (default) is a Keras classifier trained the way Neural
      LSH (Dong et al., 2020) is: the target of each training point is the
      distribution of cluster ids among its ``n_label_neighbors`` nearest
      neighbours, so the router learns where a point's *neighbours* live, not
      only where the point itself lives.

    With ``n_probe == n_clusters`` the search is exact and equals
    ``NearestNeighbors(algorithm='brute')``.

    Parameters
    ----------
    n_neighbors : int, default=5
        Number of neighbours for :meth:`kneighbors` and :meth:`transform`.
    n_clusters : int, default=None
        Number of k-means clusters; ``ceil(sqrt(n_samples))`` if None.
    n_probe : int, default=None
        Clusters searched per query; ``ceil(sqrt(n_clusters))`` if None.
        Ignored when ``target_recall`` is set.
    router : {'mlp', 'centroid'}, default='mlp'
        How clusters are ranked for a query.
    hidden_layer_sizes : tuple of int, default=(256,)
        Hidden layers of the 'mlp' router.
    n_label_neighbors : int, default=10
        Neighbours whose clusters make each training point's soft label.
    epochs : int, default=30
        Maximum training epochs of the 'mlp' router.
    batch_size : int, default=256
        Rows per gradient step of the 'mlp' router.
    learning_rate : float, default=1e-3
        Adam's step size for the 'mlp' router.
    validation_fraction : float, default=0.1
        Rows held out for early stopping of the 'mlp' router.
    n_iter_no_change : int, default=5
        Epochs without improvement before the 'mlp' router stops.
    radius : float, default=1.0
        Range of :meth:`radius_neighbors` queries by default.
    metric : str, default='minkowski'
        One of 'euclidean', 'sqeuclidean', 'manhattan' ('cityblock', 'l1'),
        'cosine', 'chebyshev', 'minkowski' (with ``p``), 'l2'. With 'cosine'
        the unit-normalised rows are partitioned.
    p : float, default=2
        Power of the Minkowski metric (``p >= 1``).
    metric_params : dict, default=None
        Only ``{'p': value}`` for the Minkowski metric.
    target_recall : float, default=None
        If set, ``fit`` picks the smallest ``n_probe`` whose recall@n_neighbors
        on a held-out sample reaches this value.
    mode : {'distance', 'connectivity'}, default='distance'
        Edge weights of the graph returned by :meth:`transform`.
    n_jobs : int, default=None
        Threads of exact search and re-ranking. None uses every core, as
        scikit-learn's brute force does through BLAS/OpenMP (fewer if
        ``OMP_NUM_THREADS`` or joblib's ``parallel_config(n_jobs=...)`` say
        so); ``n_jobs=1`` keeps the search to one thread.
    random_state : int, RandomState instance or None, default=None
        Seeds k-means, the router, and the recall sample.
    verbose : int, default=0
        Progress messages (and router epochs) when positive.
    algorithm : {'auto'}, default='auto'
        Accepted for code written for ``NearestNeighbors``; any other value
        (a tree or brute force) is an error that says how to search exactly
        here: ``n_probe=n_clusters``.
    leaf_size : int, default=30
        Accepted for code written for ``NearestNeighbors``; it tunes trees
        this estimator does not build, so it has no effect.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (`n_clusters_`, `n_features_in_`)
        The k-means centres, in the units of the data (of the unit-normalised
        rows for cosine).
    labels_ : ndarray of shape (`n_samples_fit_`,)
        Cluster of each fitted row.
    n_clusters_ : int
        Number of clusters.
    history_ : dict of list of float or None
        Router training losses per epoch; None for the 'centroid' router.
    n_iter_ : int
        Router training epochs (0 for the 'centroid' router).
    recall_ : float
        Recall@n_neighbors measured at the end of ``fit`` against exact
        search, on up to 1,024 training points queried with themselves
        excluded; from 1,280 fitted points on they (a fifth at most) are
        held out of k-means and router training (they stay in the index).
    search_params_ : dict
        The search effort in use: ``{'n_probe': n}``. Assign another (e.g.
        ``{'n_probe': 8}``) to change the effort without refitting.
    effective_metric_ : str
        The metric used, after resolving aliases and Minkowski powers.
    effective_metric_params_ : dict
        Its parameters.
    n_samples_fit_ : int
        Number of fitted points.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during ``fit``, when ``X`` has string
        column names.

    See Also
    --------
    LearnedNeighbors : Search in a learned embedding instead.
    sklearn.neighbors.NearestNeighbors : Exact search.

    Notes
    -----
    ``radius_neighbors`` searches the probed clusters only; it is exact when
    every cluster is probed.

    References
    ----------
    Y. Dong, P. Indyk, I. Razenshteyn, T. Wagner. "Learning Space Partitions
    for Nearest Neighbor Search". ICLR 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from skknn import ClusterFilteredKNN
    >>> X = np.array([[0., 0.], [1., 0.], [0., 1.], [5., 5.], [6., 5.]])
    >>> nn = ClusterFilteredKNN(n_neighbors=2, router="centroid", n_clusters=2,
    ...                         n_probe=2, random_state=0).fit(X)
    >>> nn.kneighbors([[5.5, 5.]])[1]
    array([[3, 4]])
    """

    _parameter_constraints: dict = {
        **SearchBase._parameter_constraints,
        "n_clusters": [Interval(Integral, 1, None, closed="left"), None],
        "n_probe": [Interval(Integral, 1, None, closed="left"), None],
        "router": [StrOptions({"mlp", "centroid"})],
        "hidden_layer_sizes": ["array-like"],
        "n_label_neighbors": [Interval(Integral, 1, None, closed="left")],
        **TRAINING_CONSTRAINTS,
    }

    def __init__(
        self,
        n_neighbors=5,
        *,
        n_clusters=None,
        n_probe=None,
        router="mlp",
        hidden_layer_sizes=(256,),
        n_label_neighbors=10,
        epochs=30,
        batch_size=256,
        learning_rate=1e-3,
        validation_fraction=0.1,
        n_iter_no_change=5,
        radius=1.0,
        metric="minkowski",
        p=2,
        metric_params=None,
        target_recall=None,
        mode="distance",
        n_jobs=None,
        random_state=None,
        verbose=0,
        algorithm="auto",
        leaf_size=30,
    ):
        self.n_neighbors = n_neighbors
        self.n_clusters = n_clusters
        self.n_probe = n_probe
        self.router = router
        self.hidden_layer_sizes = hidden_layer_sizes
        self.n_label_neighbors = n_label_neighbors
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.radius = radius
        self.metric = metric
        self.p = p
        self.metric_params = metric_params
        self.target_recall = target_recall
        self.mode = mode
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose
        self.algorithm = algorithm
        self.leaf_size = leaf_size

    _EXACT_HINT = "For exact search probe every cluster: n_probe=n_clusters."

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Partition the data, train the router and index the clusters.

        ``fit`` is atomic: if it raises (or is interrupted), the estimator
        answers as before the call, or stays unfitted.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data (sparse rows are stored dense).
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : ClusterFilteredKNN
            The fitted estimator.
        """
        return self._fit(X, y)

    # ----------------------------------------------------------- the index
    def _fit_index(self, X, y, train_rows, rng):
        n_samples = X.shape[0]
        n_clusters = self.n_clusters or math.ceil(math.sqrt(n_samples))
        if n_clusters > len(train_rows):
            raise ValueError(
                f"n_clusters={n_clusters} exceeds the {len(train_rows)} samples k-means "
                f"is fitted on (n_samples={n_samples})."
            )
        if self.n_probe is not None and self.n_probe > n_clusters:
            raise ValueError(
                f"n_probe={self.n_probe} exceeds n_clusters={n_clusters}; at most every "
                "cluster can be probed."
            )
        self.n_clusters_ = n_clusters
        # k-means, the router and the routes all work on the ranking rows:
        # centred and scaled (unit rows for cosine), so that neither far
        # offsets nor extreme scales reach them.
        B = self._space.fitted.block
        self._partition(B, train_rows, rng)
        # From here on the space stores its rows cluster by cluster; B keeps
        # the original order.
        self._store_by_cluster()
        self.history_, self.n_iter_, self._router = None, 0, None
        if self.router == "mlp" and n_clusters > 1:
            self._train_router(B, train_rows, rng)

    def _partition(self, B, train_rows, rng):
        full = len(train_rows) <= _FULL_KMEANS_UP_TO
        kmeans_class = KMeans if full else MiniBatchKMeans
        self._log(f"{kmeans_class.__name__} into {self.n_clusters_} clusters")
        kmeans = kmeans_class(self.n_clusters_, n_init=1, random_state=draw_seed(rng))
        # k-means++ on float32 is many times slower than on float64 in
        # scikit-learn (114 s vs 6.4 s at 20k x 784), so full k-means gets
        # float64; MiniBatchKMeans seeds on a sample and keeps float32 memory.
        kmeans.fit(B[train_rows].astype(np.float64 if full else np.float32))
        self._centers = kmeans.cluster_centers_.astype(np.float32)
        self._centers_sqnorm = np.einsum("ij,ij->i", self._centers, self._centers)
        self.cluster_centers_ = self._space.raw_of_block(kmeans.cluster_centers_)
        self.labels_ = block_topk(
            B.astype(np.float32, copy=False), self._centers, 1, self._centers_sqnorm,
            self._n_jobs,
        )[1][:, 0]

    def _store_by_cluster(self):
        """Store the rows cluster by cluster, from ``labels_``.

        The rows of cluster c are stored at positions
        ``_offsets[c]:_offsets[c + 1]`` of the space.
        """
        order = np.argsort(self.labels_, kind="stable")
        self._offsets = np.searchsorted(self.labels_[order], np.arange(self.n_clusters_ + 1))
        self._space.permute(order)
        fitted = self._space.fitted
        self._sq_max = float(fitted.sq.max(initial=0.0)) if fitted.sq is not None else 0.0

    def _soft_labels(self, rows):
        """Share of each row's nearest neighbours that lies in each cluster."""
        m = min(self.n_label_neighbors, self.n_samples_fit_ - 1)
        if m < 1:
            return np.eye(self.n_clusters_, dtype=np.float32)[self.labels_[rows]]
        q = self._space.fitted_rows(rows)
        if self.n_samples_fit_ <= _EXACT_GRAPH_UP_TO:
            found = exact_kneighbors(self._space, q, m + 1, n_jobs=self._n_jobs)
        else:
            n_probe = max(1, math.ceil(_GRAPH_PROBE_SHARE * self.n_clusters_))
            self._log(f"approximate {m}-NN graph of {len(rows)} rows, {n_probe} clusters each")
            found = self._probe_knn(q, m + 1, self._centroid_route(q.block, n_probe))
        _, neighbors = drop_self(found[0], self._space.to_ids(found[1]), rows)
        labels = np.zeros((len(rows), self.n_clusters_), dtype=np.float32)
        np.add.at(labels, (np.arange(len(rows))[:, None], self.labels_[neighbors]), 1.0 / m)
        return labels

    def _train_router(self, B, train_rows, rng):
        keras = import_keras()
        hidden = check_hidden_sizes(self.hidden_layer_sizes)
        targets = self._soft_labels(train_rows)
        self._router_mean, self._router_scale = fit_scaling(B[train_rows])
        model = build_mlp(
            B.shape[1], hidden + [self.n_clusters_], ["relu"] * len(hidden) + ["linear"],
            draw_seed(rng),
        )
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
        inputs = self._router_input(B[train_rows])
        self._router_sqmax = max_sqnorm(inputs)
        self.history_ = train(
            model, loss, inputs, targets,
            params=training_params(self), rng=rng, owner=type(self).__name__,
        )
        self.n_iter_ = len(self.history_["loss"])
        self._router = MLPWeights.from_keras(model)

    def _router_input(self, B):
        return apply_scaling(B, self._router_mean, self._router_scale).astype(np.float32)

    # ------------------------------------------------------------- routing
    def _centroid_route(self, B, n_probe):
        return block_topk(B, self._centers, n_probe, self._centers_sqnorm, self._n_jobs)[1]

    def _route(self, q, n_probe):
        if self._router is None:
            return self._centroid_route(q.block, n_probe)
        with np.errstate(over="ignore", invalid="ignore"):
            inputs = self._router_input(q.block)
            logits = self._router(inputs)
        far = beyond_range(inputs, self._router_sqmax)
        clusters = np.broadcast_to(np.arange(self.n_clusters_), logits.shape)
        probes = _sorted_topk(-logits, clusters, n_probe)[1]
        # Queries far outside the training data (where the network only
        # extrapolates, or overflows) are routed by the nearest centres.
        lost = np.flatnonzero(far | ~np.isfinite(logits).all(axis=1))
        if len(lost):
            probes[lost] = self._centroid_route(q.block[lost], n_probe)
        return probes

    def route(self, X, n_probe=None):
        """The clusters each query is sent to, most promising first.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Query points.
        n_probe : int, default=None
            Clusters per query; the fitted search effort if None.

        Returns
        -------
        clusters : ndarray of shape (n_queries, n_probe)
            Cluster ids (rows of ``cluster_centers_``).
        """
        check_is_fitted(self)
        n_probe = self.search_params_["n_probe"] if n_probe is None else n_probe
        if not isinstance(n_probe, Integral) or not 1 <= n_probe <= self.n_clusters_:
            raise ValueError(
                f"n_probe must be an integer in [1, n_clusters_={self.n_clusters_}], "
                f"got {n_probe!r}."
            )
        n_queries, rows_of = self._queries(X)
        parts = [self._route(rows_of(batch), int(n_probe))
                 for batch in gen_batches(n_queries, _QUERY_BATCH)]
        return np.vstack(parts) if parts else np.empty((0, int(n_probe)), dtype=np.intp)

    # -------------------------------------------------------------- search
    def _by_cluster(self, probes):
        """For each probed, non-empty cluster: its stored rows and its queries.

        Yields ``(lo, hi, queries)`` with the cluster's rows at stored
        positions ``lo:hi``, in batches of queries that fit in working memory.
        """
        n_probe = probes.shape[1]
        flat = probes.ravel()
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(self.n_clusters_ + 1))
        for c in np.flatnonzero(np.diff(bounds)):
            lo, hi = self._offsets[c], self._offsets[c + 1]
            if hi > lo:
                queries = order[bounds[c] : bounds[c + 1]] // n_probe
                for batch in _query_batches(len(queries), 3 * (hi - lo) * 8):
                    yield lo, hi, queries[batch]

    def _probe_knn(self, q, k, probes):
        """Top-``k`` of each query among the rows of its probed clusters.

        Ranking values pick ``k`` plus a few rows per query in a running
        merge, cluster by cluster (memory O(n_queries * k) whatever the number
        of probes); the exact distances then decide. A query for which a row
        left out could still, within the ranking's error bound, beat the
        exact ``k``-th is re-ranked over all its probed rows.
        """
        space, fitted = self._space, self._space.fitted
        dot = space.metric.is_dot_product
        k_sel = k + _EXTRA_SELECTED if dot else k
        dist = np.full((len(q), k_sel), np.inf)
        ind = np.full((len(q), k_sel), -1, dtype=np.intp)
        # Smallest ranking value among rows left out of each running top.
        floor = np.full(len(q), np.inf)
        for lo, hi, qi in self._by_cluster(probes):
            x_sq = None if fitted.sq is None else fitted.sq[lo:hi]
            D = space.block_values(q[qi], fitted.block[lo:hi], x_sq)
            cols = np.broadcast_to(np.arange(lo, hi), D.shape)
            d, i = _sorted_topk(D, cols, min(k_sel + 1, hi - lo))
            d, i = _sorted_topk(np.hstack([dist[qi], d]), np.hstack([ind[qi], i]), k_sel + 1)
            floor[qi] = np.minimum(floor[qi], d[:, k_sel])
            dist[qi], ind[qi] = d[:, :k_sel], i[:, :k_sel]
        if not dot:
            return dist[:, :k], ind[:, :k]
        dist, ind = rerank(space, q, ind, k, self._n_jobs)
        kth = space.to_ranking(dist[:, -1])
        with np.errstate(over="ignore", invalid="ignore"):
            # Not "floor - error > kth", so that NaN (a query beyond float32
            # ranking) counts as unsure.
            unsure = np.flatnonzero(~(floor - space.error(q.sq, self._sq_max) > kth))
        for row in unsure:
            cols = np.concatenate([np.arange(self._offsets[c], self._offsets[c + 1])
                                   for c in probes[row]])
            dist[row], ind[row] = rerank(space, q[row : row + 1], cols[None, :], k)
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

    def _n_probe(self, params):
        return min(params["n_probe"], self.n_clusters_)

    def _knn(self, q, k, params, self_included=False):
        return self._probe_knn(q, k, self._route(q, self._n_probe(params)))

    def _radius(self, q, radius, params):
        return self._probe_radius(q, radius, self._route(q, self._n_probe(params)))

    def _default_search_params(self):
        if self.n_probe is not None:
            return {"n_probe": self.n_probe}
        return {"n_probe": math.ceil(math.sqrt(self.n_clusters_))}

    def _search_efforts(self):
        grid = sorted({min(n, self.n_clusters_) for n in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32,
                                                          48, 64, 96, 128, 192, 256)})
        grid += [n for n in (self.n_clusters_,) if n > grid[-1]]
        return [{"n_probe": n} for n in grid]

    def mean_candidates(self, X, n_probe=None):
        """Mean number of fitted points searched per query (probed cluster sizes).

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Query points.
        n_probe : int, default=None
            Clusters per query; the fitted search effort if None.

        Returns
        -------
        mean : float
        """
        sizes = np.diff(self._offsets)
        return float(sizes[self.route(X, n_probe)].sum(axis=1).mean())
