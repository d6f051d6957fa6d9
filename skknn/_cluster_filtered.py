"""ClusterFilteredKNN: a learned router over clusters, exact search inside them."""

import math
from numbers import Integral, Real

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.base import _fit_context
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.utils import gen_batches
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._base import _QUERY_BATCH, SearchBase, query_batches
from ._cluster_search import ClusterSearchMixin
from ._keras import (
    TRAINING_CONSTRAINTS,
    MLPWeights,
    build_mlp,
    check_hidden_sizes,
    draw_seed,
    fit_scaling,
    train,
    training_params,
)
from ._kernels import in_slices
from ._partitions import (
    chosen_partition,
    exact_graph,
    given_labels,
    metis_labels,
    neighbor_graph,
    principal_codes,
    project,
)
from ._routing import padded, probe_order, router_targets, softmax_weights, stack_padded
from ._search import (
    beyond_range,
    block_topk,
    join_parts,
    max_sqnorm,
    research_cut_off,
)

# Fitted points up to which plain KMeans partitions the data (MiniBatchKMeans
# beyond).
_FULL_KMEANS_UP_TO = 20_000
# The router's inputs: this many leading principal components. Measured on
# Fashion-MNIST (245 METIS parts): candidates at recall@10 0.90 with 64
# components 636, with all 784 inputs 647; routing 10k queries 18 ms vs 34 ms.
_ROUTER_INPUTS = 64
# The 'mlp' router's default effort, and the efforts target_recall tries.
_DEFAULT_PROBE_MASS = 0.9
_PROBE_MASSES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999,
                 1.0)
_N_PROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class ClusterFilteredKNN(ClusterSearchMixin, SearchBase):
    """Nearest neighbours searched only in the clusters a router picks.

    A drop-in for :class:`sklearn.neighbors.NearestNeighbors`. The fitted
    points are partitioned into clusters; for each query, a router ranks the
    clusters and exact search runs only in the ones it probes. All queries
    that probe a cluster are searched against it with one matrix product, so
    work is batched by cluster, not looped per query.

    * ``router='mlp'`` (default) is the Neural LSH recipe (Dong et al.,
      2020): the clusters are a balanced partition of the k-nearest-neighbour
      graph (METIS, ``partition='graph'``), and a small Keras classifier
      learns, for each training point, the distribution of cluster ids among
      its ``n_label_neighbors`` nearest neighbours: where a point's
      *neighbours* live. A query probes the most probable clusters until
      their probability reaches ``probe_mass``.
    * ``router='centroid'`` probes the ``n_probe`` clusters with the nearest
      k-means centres: a plain inverted-file index, the baseline.

    With every cluster probed (``n_probe == n_clusters`` or
    ``probe_mass=1``) the search is exact and equals
    ``NearestNeighbors(algorithm='brute')``.

    Parameters
    ----------
    n_neighbors : int, default=5
        Number of neighbours for :meth:`kneighbors` and :meth:`transform`.
    n_clusters : int, default=None
        Number of clusters; ``ceil(sqrt(n_samples))`` if None (given labels
        set it themselves).
    n_probe : int, default=None
        Clusters searched per query (the most promising ones). If None, the
        'mlp' router probes by ``probe_mass`` and the 'centroid' router
        probes ``ceil(sqrt(n_clusters))`` clusters. Ignored when
        ``target_recall`` is set.
    probe_mass : float in (0, 1], default=None
        'mlp' router only: each query probes its most probable clusters
        (highest probability per fitted point first) until their predicted
        probability reaches ``probe_mass``, so a query the router is sure
        about scans fewer clusters than one it is not. 0.9 if neither this
        nor ``n_probe`` is set; 1 probes every cluster. Ignored when
        ``target_recall`` is set.
    partition : {'auto', 'graph', 'kmeans'} or array-like of shape \
            (n_samples,), default='auto'
        How the fitted points are split into clusters.

        - 'graph': a balanced partition of the k-nearest-neighbour graph of
          the fitted points by METIS (needs ``pymetis``: ``pip install
          'skknn[graph]'``); parts of equal size with few neighbour pairs
          split between parts.
        - 'kmeans': k-means cells.
        - 'auto': 'graph' for the 'mlp' router when ``pymetis`` is installed,
          'kmeans' otherwise (``partition_`` says which).
        - an array of cluster ids ``0 .. n_clusters - 1``, one per fitted
          row, each id used: your own partition.
    router : {'mlp', 'centroid'}, default='mlp'
        How clusters are ranked for a query.
    hidden_layer_sizes : tuple of int, default=(256,)
        Hidden layers of the 'mlp' router.
    n_label_neighbors : int, default=10
        Neighbours whose clusters make each training point's soft label; the
        k-nearest-neighbour graph that 'graph' partitions has as many.
    epochs : int, default=30
        Maximum training epochs of the 'mlp' router.
    batch_size : int, default=256
        Rows per gradient step of the 'mlp' router.
    learning_rate : float, default=1e-3
        Adam's step size for the 'mlp' router.
    validation_fraction : float, default=0.1
        Rows held out for early stopping of the 'mlp' router.
    n_iter_no_change : int, default=5
        Epochs without an improvement of at least ``tol`` in the validation
        loss before the 'mlp' router stops (its best epoch is kept).
    tol : float, default=1e-4
        Minimum improvement of the router's validation loss; a larger value
        stops sooner. Fewer epochs trade routing for fit time: on 100k x 128
        embedding-like rows, 10 epochs rather than the defaults' 28 fitted
        in 16 s rather than 26 s, for ~5% more candidates at recall 0.95.
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
        The k-means centres, or the mean of each cluster for other
        partitions, in the units of the data (of the unit-normalised rows for
        cosine).
    labels_ : ndarray of shape (`n_samples_fit_`,)
        Cluster of each fitted row.
    n_clusters_ : int
        Number of clusters (METIS may leave a part empty on tiny or
        disconnected graphs: empty parts are dropped).
    partition_ : {'graph', 'kmeans', 'given'}
        The partition used.
    history_ : dict of list of float or None
        Router training losses per epoch; None for the 'centroid' router.
    n_iter_ : int
        Router training epochs (0 for the 'centroid' router).
    recall_ : float
        Recall@n_neighbors measured at the end of ``fit`` against exact
        search, on up to 1,024 training points queried with themselves
        excluded; from 1,280 fitted points on they (a fifth at most) are
        held out of the partition and router training (they stay in the index).
    search_params_ : dict
        The search effort in use: ``{'n_probe': n}``, or ``{'probe_mass': m}``
        for the 'mlp' router. Assign another (e.g. ``{'n_probe': 8}`` or
        ``{'probe_mass': 0.95}``) to change the effort without refitting.
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
    ``radius_neighbors`` searches the probed clusters, so it may miss points;
    it is exact when every cluster is probed. A query whose probed rows all
    lie within the radius (the ball may hold more points than were looked
    at) is searched in every cluster, so that results are never cut off at
    the probed clusters.

    The router's inputs are the leading principal components of the data,
    so that routing a query costs less than scanning one cluster. A query
    far outside the training data (where the network only extrapolates)
    probes every cluster when probing by mass, and the nearest centres for a
    fixed ``n_probe``.

    :meth:`route` and :meth:`search_clusters` are the two halves of
    :meth:`kneighbors`; with ``partition`` given as labels they let another
    router be tried on the same clusters.

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
        "probe_mass": [Interval(Real, 0, 1, closed="right"), None],
        "partition": [StrOptions({"auto", "graph", "kmeans"}), "array-like"],
        "router": [StrOptions({"mlp", "centroid"})],
        "hidden_layer_sizes": ["array-like"],
        "n_label_neighbors": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        **TRAINING_CONSTRAINTS,
    }

    def __init__(
        self,
        n_neighbors=5,
        *,
        n_clusters=None,
        n_probe=None,
        probe_mass=None,
        partition="auto",
        router="mlp",
        hidden_layer_sizes=(256,),
        n_label_neighbors=10,
        epochs=30,
        batch_size=256,
        learning_rate=1e-3,
        validation_fraction=0.1,
        n_iter_no_change=5,
        tol=1e-4,
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
        self.probe_mass = probe_mass
        self.partition = partition
        self.router = router
        self.hidden_layer_sizes = hidden_layer_sizes
        self.n_label_neighbors = n_label_neighbors
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
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
    # Each cluster is scanned with one matrix product for all the queries of
    # a batch that probe it: larger batches, larger products (per batch
    # ~6 kB per query of 784 float32 features).
    _query_batch = 2 * _QUERY_BATCH

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
        given = given_labels(self.partition, n_samples, self.n_clusters)
        if given is not None:
            n_clusters = int(given.max()) + 1
        else:
            n_clusters = self.n_clusters or math.ceil(math.sqrt(n_samples))
        if given is None and n_clusters > len(train_rows):
            raise ValueError(
                f"n_clusters={n_clusters} exceeds the {len(train_rows)} samples the partition "
                f"is fitted on (n_samples={n_samples})."
            )
        if self.n_probe is not None and self.n_probe > n_clusters:
            raise ValueError(
                f"n_probe={self.n_probe} exceeds n_clusters={n_clusters}; at most every "
                "cluster can be probed."
            )
        if self.probe_mass is not None and (self.router != "mlp" or self.n_probe is not None):
            raise ValueError(
                "probe_mass sets the effort of the 'mlp' router from its probabilities; "
                f"with router={self.router!r} and n_probe={self.n_probe!r} use n_probe alone."
            )
        self.partition_ = chosen_partition(self.partition, given, self.router)
        self.n_clusters_ = n_clusters
        # Drawn first, so that the routers share one partition for one
        # random_state.
        partition_seed = draw_seed(rng)
        # The partition, the router and the routes all work on the routing
        # rows: centred and scaled (unit rows for cosine), so that neither far
        # offsets nor extreme scales reach them (Space.routing_rows).
        B = self._space.routing_rows(self._space.fitted.block)
        learned = self.router == "mlp" and n_clusters > 1
        axes = codes = None
        if learned or (self.partition_ == "graph" and not exact_graph(n_samples)):
            self._log("principal components")
            self._pca_offset, axes, codes = principal_codes(B, train_rows, rng)
        graph = None
        if learned or self.partition_ == "graph":
            m = min(self.n_label_neighbors, n_samples - 1)
            if m >= 1:
                self._log(f"{m}-NN graph")
                graph = neighbor_graph(self._space, m, codes, self._n_jobs, rng)
        if self.partition_ == "kmeans":
            self._kmeans(B, train_rows, partition_seed)
        else:
            if given is None:
                self._log(f"METIS into {n_clusters} parts")
            labels = given if given is not None else metis_labels(
                graph, train_rows, n_samples, n_clusters, partition_seed)
            self._set_clusters(B, labels)
        # From here on the space stores its rows cluster by cluster: B (the
        # original order) and the codes are let go first (copies of the data).
        leading = codes[train_rows, :_ROUTER_INPUTS] if learned else None
        del B, codes
        self._store_by_cluster()
        self.history_, self.n_iter_, self._router = None, 0, None
        if learned and self.n_clusters_ > 1:
            self._train_router(axes, leading, graph, train_rows, rng)

    def _kmeans(self, B, train_rows, seed):
        full = len(train_rows) <= _FULL_KMEANS_UP_TO
        kmeans_class = KMeans if full else MiniBatchKMeans
        self._log(f"{kmeans_class.__name__} into {self.n_clusters_} clusters")
        kmeans = kmeans_class(self.n_clusters_, n_init=1, random_state=seed)
        # k-means++ on float32 is many times slower than on float64 in
        # scikit-learn (114 s vs 6.4 s at 20k x 784), so full k-means gets
        # float64; MiniBatchKMeans seeds on a sample and keeps float32 memory.
        kmeans.fit(B[train_rows].astype(np.float64 if full else np.float32))
        self._set_centers(kmeans.cluster_centers_)
        self.labels_ = block_topk(
            B.astype(np.float32, copy=False), self._centers, 1, self._centers_sqnorm,
            self._n_jobs,
        )[1][:, 0]

    def _set_clusters(self, B, labels):
        """Clusters given by labels; their centres are their means."""
        self.labels_ = labels
        self.n_clusters_ = int(labels.max()) + 1
        sums = np.zeros((self.n_clusters_, B.shape[1]))
        for rows in gen_batches(len(B), _QUERY_BATCH):
            part = labels[rows]
            member = csr_matrix((np.ones(len(part)), (part, np.arange(len(part)))),
                                shape=(self.n_clusters_, len(part)))
            with np.errstate(over="ignore", invalid="ignore"):
                sums += member @ B[rows].astype(np.float64)
        self._set_centers(sums / np.bincount(labels, minlength=self.n_clusters_)[:, None])

    def _set_centers(self, centers):
        with np.errstate(over="ignore"):
            self._centers = centers.astype(np.float32)
        self._centers_sqnorm = np.einsum("ij,ij->i", self._centers, self._centers)
        self.cluster_centers_ = self._space.raw_of_block(centers)

    def _store_by_cluster(self):
        """Store the rows cluster by cluster, from ``labels_``.

        The rows of cluster c are stored at positions
        ``_offsets[c]:_offsets[c + 1]`` of the space.
        """
        order = np.argsort(self.labels_, kind="stable")
        self._offsets = np.searchsorted(self.labels_[order], np.arange(self.n_clusters_ + 1))
        self._sizes = np.diff(self._offsets)
        self._space.permute(order)
        fitted = self._space.fitted
        self._sq_max = float(fitted.sq.max(initial=0.0)) if fitted.sq is not None else 0.0
        self._block_sq32 = None if fitted.sq is None else fitted.sq.astype(np.float32)

    def _train_router(self, axes, leading, graph, train_rows, rng):
        """Train the 'mlp' router on the training rows, given their ``leading``
        principal codes (the first ``_ROUTER_INPUTS``) and the ``axes``."""
        hidden = check_hidden_sizes(self.hidden_layer_sizes)
        targets, loss = router_targets(graph, train_rows, self.labels_, self.n_clusters_)
        # The router reads the leading components, standardised; the
        # standardisation is folded into the projection.
        n_inputs = leading.shape[1]
        mean, scale = fit_scaling(leading)
        self._router_axes = axes[:, :n_inputs] / scale
        self._router_shift = (mean / scale).astype(np.float32)
        if self._space.metric.is_dot_product:
            # Ranking rows are centred and scaled: the projection of float32
            # queries folds the offset in (see _router_input).
            self._router_axes32 = self._router_axes.astype(np.float32)
            self._router_bias32 = self._router_shift + (
                self._pca_offset @ self._router_axes).astype(np.float32)
        # A batch of rows at a time: no copy of all the training rows at once.
        block, stored = self._space.fitted.block, self._space.positions(train_rows)
        inputs = np.empty((len(train_rows), n_inputs), dtype=np.float32)
        for rows in gen_batches(len(train_rows), _QUERY_BATCH):
            inputs[rows] = self._router_input(self._space.routing_rows(block[stored[rows]]))
        self._router_sqmax = max_sqnorm(inputs)
        model = build_mlp(
            n_inputs, hidden + [self.n_clusters_], ["relu"] * len(hidden) + ["linear"],
            draw_seed(rng),
        )
        # The key names the layers and the loss (compiled epochs are shared).
        key = ("router", n_inputs, tuple(hidden), self.n_clusters_,
               getattr(loss, "__name__", type(loss).__name__))
        self.history_ = train(
            model, loss, inputs, targets,
            params=training_params(self), rng=rng, owner=type(self).__name__, cache_key=key,
        )
        self.n_iter_ = len(self.history_["loss"])
        self._router = MLPWeights.from_keras(model)

    def _router_input(self, B):
        """The router's inputs for routing rows ``B`` (``Space.routing_rows``):
        standardised leading principal components, float32."""
        if B.dtype == np.float32 and self._space.metric.is_dot_product:
            # Ranking rows are centred already: subtract the projected offset
            # after the product, with no copy of B.
            with np.errstate(over="ignore", invalid="ignore"):
                Z = B @ self._router_axes32
            Z -= self._router_bias32
            return Z
        Z = project(B, self._router_axes, self._pca_offset)
        Z -= self._router_shift
        return Z

    # ------------------------------------------------------------- routing
    def _centroid_route(self, B, n_probe):
        return block_topk(B, self._centers, n_probe, self._centers_sqnorm)[1]

    def _router_weights(self, B):
        """The router's probabilities times a positive factor per query
        (``exp`` of the logits minus their maximum), their row sums, and the
        queries it cannot rank (beyond the training data's range, or
        overflowing: uniform weights)."""
        with np.errstate(over="ignore", invalid="ignore"):
            inputs = self._router_input(B)
            logits = self._router(inputs)
        return softmax_weights(logits, beyond_range(inputs, self._router_sqmax))

    def _router_proba(self, B):
        """The router's probability of each cluster, and the queries it cannot
        rank (see :meth:`_router_weights`)."""
        W, total, lost = self._router_weights(B)
        return W / total[:, None].astype(W.dtype), lost

    def _route(self, B, params):
        """Clusters each query (ranking rows ``B``) probes, most promising
        first; -1 pads the rows of queries that probe fewer."""
        B = self._space.routing_rows(B)
        n_probe = params.get("n_probe")
        if n_probe is not None:
            n_probe = min(n_probe, self.n_clusters_)
        if self._router is None:
            return self._centroid_route(B, n_probe)
        W, total, lost = self._router_weights(B)
        probes = probe_order(W, self._sizes, n_probe, params.get("probe_mass"), total)
        if lost.any():
            # Where the network only extrapolates: the nearest centres, every
            # cluster when probing by mass (exact search).
            width = n_probe or self.n_clusters_
            probes = padded(probes, width)
            probes[lost] = self._centroid_route(B[lost], width)
        return probes

    def route(self, X, n_probe=None):
        """The clusters each query is sent to, most promising first.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Query points.
        n_probe : int, default=None
            Clusters per query; the fitted search effort (``search_params_``)
            if None.

        Returns
        -------
        clusters : ndarray of shape (n_queries, width)
            Cluster ids (rows of ``cluster_centers_``); ``width`` is
            ``n_probe``, or, when probing by probability mass, the most any
            query probes, with -1 after a query's last cluster.
        """
        check_is_fitted(self)
        if n_probe is None:
            params = self.search_params_
            self._check_search_params(params)
        elif not isinstance(n_probe, Integral) or not 1 <= n_probe <= self.n_clusters_:
            raise ValueError(
                f"n_probe must be an integer in [1, n_clusters_={self.n_clusters_}], "
                f"got {n_probe!r}."
            )
        else:
            params = {"n_probe": int(n_probe)}
        n_queries, rows_of = self._queries(X)
        parts = [self._route(rows_of(batch).block, params)
                 for batch in query_batches(n_queries, self._query_batch)]
        if not parts:
            return np.empty((0, params.get("n_probe", 0)), dtype=np.intp)
        return stack_padded(parts)

    # -------------------------------------------------------------- search
    def search_clusters(self, X, clusters, n_neighbors=None, return_distance=True):
        """Exact nearest neighbours of each query among the rows of the given clusters.

        The search half of :meth:`kneighbors` (:meth:`route` is the other):
        give it the clusters another router chose.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Query points.
        clusters : array-like of int of shape (n_queries, n_probes)
            Cluster ids to search for each query; -1 entries (and repeats)
            are skipped.
        n_neighbors : int, default=None
            Number of neighbours; the constructor's ``n_neighbors`` if None.
        return_distance : bool, default=True
            Whether to return the distances.

        Returns
        -------
        neigh_dist : ndarray of shape (n_queries, n_neighbors)
            Exact distances, ascending; ``inf`` where the clusters hold fewer
            than ``n_neighbors`` rows. Only present if ``return_distance=True``.
        neigh_ind : ndarray of shape (n_queries, n_neighbors)
            Indices of the neighbours in the fitted data; -1 where the
            clusters hold fewer than ``n_neighbors`` rows.
        """
        check_is_fitted(self)
        n_neighbors = self._check_n_neighbors(n_neighbors)
        n_queries, rows_of = self._queries(X)
        clusters = np.asarray(clusters)
        if (clusters.ndim != 2 or len(clusters) != n_queries
                or (clusters.size and clusters.dtype.kind not in "iu")
                or (clusters.size and not -1 <= clusters.min() <= clusters.max()
                    < self.n_clusters_)):
            raise ValueError(
                f"clusters must be integers in [-1, n_clusters_={self.n_clusters_}) of shape "
                f"(n_queries, n_probes) with n_queries={n_queries}, got dtype {clusters.dtype} "
                f"and shape {clusters.shape}."
            )
        # Each cluster once per query (a repeat would be scanned twice).
        clusters = np.sort(clusters.astype(np.intp), axis=1)
        clusters[:, 1:][clusters[:, 1:] == clusters[:, :-1]] = -1
        dists, inds = [], []
        for batch in query_batches(n_queries, self._query_batch):
            q, probes = rows_of(batch), clusters[batch]
            dist, ind = self._probe_knn(q.prepare(self._n_jobs), n_neighbors, probes,
                                        self._n_jobs)
            dists.append(dist.astype(self._space.out_dtype))
            inds.append(self._space.to_ids(ind))
        if not dists:
            dists, inds = [np.empty((0, n_neighbors))], [np.empty((0, n_neighbors), np.intp)]
        dist, ind = np.vstack(dists), np.vstack(inds)
        return (dist, ind) if return_distance else ind

    def _knn(self, q, k, params, self_included=False):
        q.prepare(self._n_jobs)
        return self._probe_knn(q, k, self._routes(q, params), self._n_jobs)

    def _routes(self, q, params):
        """:meth:`_route` of the queries, slices of them side by side."""
        return stack_padded(in_slices(lambda rows: self._route(q[rows].block, params),
                                      len(q), self._n_jobs))

    def _radius(self, q, radius, params):
        every = np.arange(self.n_clusters_)

        def one(rows):
            part = q[rows]
            probes = self._route(part.block, params)
            dist, ind = self._probe_radius(part, radius, probes)
            # Where every probed row lies within the radius, the ball may hold
            # rows of the clusters not probed: such a query is searched in
            # every cluster (exactly) rather than cut off.
            looked = np.where(probes >= 0, self._sizes[np.maximum(probes, 0)], 0).sum(axis=1)
            return research_cut_off(dist, ind, looked, self.n_samples_fit_, lambda redo: (
                self._probe_radius(part[redo], radius,
                                   np.broadcast_to(every, (len(redo), len(every))))))

        return join_parts(in_slices(one, len(q), self._n_jobs))

    # -------------------------------------------------------------- effort
    def _check_search_params(self, params):
        if isinstance(params, dict) and len(params) == 1:
            key, value = next(iter(params.items()))
            number = isinstance(value, Real) and not isinstance(value, bool)
            if key == "n_probe" and number and isinstance(value, Integral) and value >= 1:
                return
            if (key == "probe_mass" and self._router is not None and number
                    and 0 < value <= 1):
                return
        keys = "['n_probe'] (a positive integer, e.g. {'n_probe': 8})"
        if self._router is not None:
            keys += " or ['probe_mass'] (a number in (0, 1], e.g. {'probe_mass': 0.95})"
        raise ValueError(f"search_params_ must be a dict with the keys {keys}, got {params!r}.")

    def _default_search_params(self):
        if self.n_probe is not None:
            return {"n_probe": self.n_probe}
        if self._router is not None:
            return {"probe_mass": self.probe_mass or _DEFAULT_PROBE_MASS}
        return {"n_probe": math.ceil(math.sqrt(self.n_clusters_))}

    def _search_efforts(self):
        if self._router is not None:
            return [{"probe_mass": mass} for mass in _PROBE_MASSES]
        grid = sorted({min(n, self.n_clusters_) for n in _N_PROBES})
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
        probes = self.route(X, n_probe)
        sizes = np.where(probes >= 0, self._sizes[np.maximum(probes, 0)], 0)
        return float(sizes.sum(axis=1).mean())
