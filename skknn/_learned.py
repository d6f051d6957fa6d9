"""LearnedNeighbors: search a learned embedding, re-rank exactly."""

import warnings
from numbers import Integral

import numpy as np
from scipy.sparse import issparse
from sklearn.base import _fit_context, clone
from sklearn.utils import gen_batches
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

from ._autoencoder import AutoencoderEmbedder
from ._base import SearchBase
from ._indexes import INDEXES
from ._keras import draw_seed
from ._kernels import in_slices
from ._metrics import Metric
from ._search import (
    beyond_range,
    block_topk,
    candidate_radius,
    drop_self,
    exact_kneighbors,
    exact_radius,
    exact_search,
    join_parts,
    max_sqnorm,
    rerank,
    research_cut_off,
    stack_parts,
)

# Fitted points from which backend='auto' builds an inverted file over the
# codes instead of searching them by brute force. Measured on Fashion-MNIST
# codes (2 cores): brute force over 60k 128-d codes finds 30 candidates for
# 10k queries in ~1.5 s and slows linearly with n; the inverted file in 65 ms,
# built in ~4 s with nothing to compile at fit (pynndescent costs ~18 s of
# numba start-up per process, its cache warm, before its build).
_IVF_FROM = 5_000
# Code sizes the default autoencoder may get. fit picks the one with the
# least estimated query cost (see _choose_code_size), in units of one code
# component scanned by the inverted file (~40 codes per candidate): per query,
# ``c * k`` candidates cost ``_SCAN_COST * d`` each for codes of ``d``
# components plus ``_RERANK_COST * F`` for re-ranking over ``F`` input
# features; encoding the query costs ``_ENCODE_COST * F`` whatever the code
# size, and exact search of the inputs ``F / _BRUTE_SPEEDUP`` per fitted row.
# Measured on Fashion-MNIST (60k x 784, 128-d codes), one thread, 8k queries:
# 74 ps per scanned code component, 555 ps per re-ranked component (a
# scattered read: 7.5x), 4.9 ns per input feature to encode (66x), 22 ps per
# component of exact brute force (3.3x cheaper: one large matrix product).
_CODE_SIZES = (16, 32, 64, 128)
_SCAN_COST = 40
_RERANK_COST = 7.5
_ENCODE_COST = 66
_BRUTE_SPEEDUP = 3.3
# The code size is estimated with PCA codes of at most this many rows.
_CODE_SIZE_SAMPLE = 20_000
_N_CODE_QUERIES = 256
# The default autoencoder trains on a random sample of at most this many rows
# (the index holds them all), so that fit time grows with n only through
# encoding and indexing. Measured on Fashion-MNIST, 128-d codes, recall@10 of
# new queries at 30 candidates: 0.952 trained on 20k rows (20 s), 0.957 on
# 35k (31 s), 0.962 on 60k (58 s).
_AUTOENCODER_ROWS = 40_000
# Fitted rows encoded at once when building the index: the encoder's
# temporaries (standardised rows, hidden layers) stay ~50 MB whatever n.
_EMBED_BATCH = 16_384
# Recall the estimate aims at when target_recall is not set.
_CODE_SIZE_RECALL = 0.95
# Candidates per neighbour tried, in order, by target_recall.
_EFFORT_GRID = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class LearnedNeighbors(SearchBase):
    """Nearest neighbours through a learned embedding, re-ranked exactly.

    A drop-in for :class:`sklearn.neighbors.NearestNeighbors`. The training
    data are embedded with ``embedder`` (by default an
    :class:`AutoencoderEmbedder`); for each query, the
    ``candidates_per_neighbor * n_neighbors`` nearest points in the embedded
    space are found (by brute force or a pynndescent graph) and re-ranked by
    their exact distance in the input space. Distances returned are always
    exact input-space distances.

    With ``embedder='passthrough', backend='brute'`` the search is exact and
    equals ``NearestNeighbors(algorithm='brute')``.

    Parameters
    ----------
    n_neighbors : int, default=5
        Number of neighbours for :meth:`kneighbors` and :meth:`transform`.
    embedder : None, 'passthrough' or transformer, default=None
        Maps inputs to the space searched for candidates. None trains an
        :class:`AutoencoderEmbedder` whose code size (16 to 128) is chosen
        from the data at fit (``code_size_``), trained on a random sample
        of at most 40,000 rows (all rows are indexed); 'passthrough' searches
        the input space itself; any scikit-learn transformer (e.g.
        :class:`~sklearn.decomposition.PCA`) is cloned and fitted, its
        ``random_state`` seeded from ours if it is None. A supervised
        embedder (e.g. :class:`TripletEmbedder`) is fitted with the ``y``
        given to :meth:`fit`. An embedder fitted beforehand is used as it is
        when wrapped in :class:`sklearn.frozen.FrozenEstimator`. For
        ``metric='cosine'`` the embedder sees unit-normalised rows.
    backend : {'auto', 'brute', 'ivf', 'pynndescent', 'hnswlib', 'usearch', \
            'annoy'}, default='auto'
        Candidate search in the embedded space: 'brute' compares every code;
        'ivf' scans the codes of the k-means cells nearest to the query (an
        inverted file over the codes); 'pynndescent' searches a k-NN graph;
        'hnswlib' and 'usearch' an HNSW graph and 'annoy' random projection
        trees, each an optional extra (e.g. ``pip install 'skknn[usearch]'``;
        Euclidean family and cosine only, as 'ivf'). 'auto' uses 'brute'
        below 5,000 fitted points and 'ivf' from there (a plain install's
        fastest, see :ref:`backends`); with ``embedder='passthrough'`` it is
        'brute', the exact search. The choice never depends on what else is
        installed.
    candidates_per_neighbor : int, default=10
        Candidates re-ranked per requested neighbour (capped at the number of
        fitted points). More candidates: higher recall, slower queries.
        Ignored in the exact setting and when ``target_recall`` is set.
    radius : float, default=1.0
        Range of :meth:`radius_neighbors` queries by default.
    metric : str, default='minkowski'
        One of 'euclidean', 'sqeuclidean', 'manhattan' ('cityblock', 'l1'),
        'cosine', 'chebyshev', 'minkowski' (with ``p``), 'l2'.
    p : float, default=2
        Power of the Minkowski metric (``p >= 1``).
    metric_params : dict, default=None
        Only ``{'p': value}`` for the Minkowski metric.
    target_recall : float, default=None
        If set, ``fit`` picks the smallest ``candidates_per_neighbor`` whose
        recall@n_neighbors on a held-out sample reaches this value (and warns
        if none does).
    mode : {'distance', 'connectivity'}, default='distance'
        Edge weights of the graph returned by :meth:`transform`.
    n_jobs : int, default=None
        Threads of the search (exact search, candidate index, re-ranking).
        None uses every core, as scikit-learn's brute force does through
        BLAS/OpenMP (fewer if
        ``OMP_NUM_THREADS`` or joblib's ``parallel_config(n_jobs=...)`` say
        so); ``n_jobs=1`` keeps the search to one thread.
    random_state : int, RandomState instance or None, default=None
        Seeds the default embedder, the recall sample and pynndescent.
    verbose : int, default=0
        Progress messages when positive (including the default embedder's
        epochs); 2 also shows pynndescent's own messages.
    algorithm : {'auto'}, default='auto'
        Accepted for code written for ``NearestNeighbors``; any other value
        (a tree or brute force) is an error that says how to search exactly
        here: ``embedder='passthrough', backend='brute'``.
    leaf_size : int, default=30
        Accepted for code written for ``NearestNeighbors``; it tunes trees
        this estimator does not build, so it has no effect.

    Attributes
    ----------
    embedder_ : transformer or None
        The fitted embedder; None for ``embedder='passthrough'``.
    code_size_ : int
        With ``embedder=None`` only: the code size chosen for the default
        autoencoder from the data (see the user guide, "Candidate backends
        and code size").
    backend_ : str
        The backend in use (``backend``, with 'auto' resolved).
    recall_ : float
        Recall@n_neighbors measured at the end of ``fit`` against exact
        search, on up to 1,024 training points queried with themselves
        excluded. From 1,280 fitted points on, these points (a fifth at
        most) are held out of the embedder's training (they stay in the
        index).
    search_params_ : dict
        The search effort in use: ``{'candidates_per_neighbor': c}``, or
        ``{}`` in the exact setting. Assign another (e.g.
        ``{'candidates_per_neighbor': 8}``) to change the effort without
        refitting.
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
    sklearn.neighbors.NearestNeighbors : Exact search.
    AutoencoderEmbedder : The default embedder.

    Notes
    -----
    ``radius_neighbors`` searches the same candidates as ``kneighbors`` with
    the constructor's ``n_neighbors``, so it may miss points within the
    radius. A query whose candidates *all* lie within the radius (the ball may
    hold more points than were looked at) is searched exactly instead, so
    results are never cut off at the number of candidates.

    Examples
    --------
    >>> import numpy as np
    >>> from skknn import LearnedNeighbors
    >>> X = np.array([[0., 0.], [1., 0.], [0., 1.], [5., 5.], [6., 5.]])
    >>> nn = LearnedNeighbors(n_neighbors=2, embedder="passthrough").fit(X)
    >>> dist, ind = nn.kneighbors([[5.5, 5.]])
    >>> ind
    array([[3, 4]])
    >>> dist
    array([[0.5, 0.5]])
    """

    _parameter_constraints: dict = {
        **SearchBase._parameter_constraints,
        "embedder": [None, StrOptions({"passthrough"}), HasMethods(["fit", "transform"])],
        "backend": [StrOptions(set(INDEXES) | {"auto"})],
        "candidates_per_neighbor": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        n_neighbors=5,
        *,
        embedder=None,
        backend="auto",
        candidates_per_neighbor=10,
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
        self.embedder = embedder
        self.backend = backend
        self.candidates_per_neighbor = candidates_per_neighbor
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

    _EXACT_HINT = "For exact search use embedder='passthrough', backend='brute'."

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Fit the embedder and build the candidate index.

        ``fit`` is atomic: if it raises (or is interrupted), the estimator
        answers as before the call, or stays unfitted.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data (sparse rows are stored dense).
        y : array-like of shape (n_samples,), default=None
            Passed to a supervised embedder; otherwise unused.

        Returns
        -------
        self : LearnedNeighbors
            The fitted estimator.
        """
        return self._fit(X, y)

    # ----------------------------------------------------------- the index
    def _fit_index(self, X, y, train_rows, rng):
        space = self._space
        inputs = space.unit_raw(space.fitted)
        self.embedder_ = self._fit_embedder(
            inputs[train_rows], None if y is None else y[train_rows], rng
        )
        n_samples = X.shape[0]
        self.backend_ = self.backend
        if self.backend == "auto":
            # Searching the inputs themselves ('passthrough') stays exact.
            small = n_samples < _IVF_FROM or self.embedder_ is None
            self.backend_ = "brute" if small else "ivf"
        self._exact = self.embedder_ is None and self.backend_ == "brute"
        if self._exact:
            return
        Z = self._embed_fitted(inputs)
        self._code_sqmax = max_sqnorm(Z)
        # Codes are compared with the Euclidean distance; passthrough inputs
        # with the estimator's metric (unit rows for cosine).
        metric = self._metric if self.embedder_ is None else Metric("euclidean")
        self._log(f"building the {self.backend_} index of {Z.shape[0]} x {Z.shape[1]} points")
        self._index = INDEXES[self.backend_](metric, self._n_jobs, draw_seed(rng), self.verbose)
        self._index.build(Z)

    def _fit_embedder(self, X, y, rng):
        if isinstance(self.embedder, str):
            return None
        if self.embedder is None:
            self.code_size_ = self._choose_code_size(X, rng)
            embedder = AutoencoderEmbedder(n_components=self.code_size_,
                                           random_state=draw_seed(rng), verbose=self.verbose)
            if len(X) > _AUTOENCODER_ROWS:
                rows = np.sort(rng.choice(len(X), _AUTOENCODER_ROWS, replace=False))
                X, y = X[rows], None if y is None else y[rows]
        else:
            embedder = clone(self.embedder)
            # As scikit-learn's ensembles do, seed a nested estimator left
            # unseeded, so that random_state makes the whole fit reproducible.
            if embedder.get_params().get("random_state", False) is None:
                embedder.set_params(random_state=draw_seed(rng))
        if y is None and _needs_y(embedder):
            raise ValueError(
                f"embedder {type(embedder).__name__} is supervised: pass the labels to "
                "fit(X, y), or give a fitted embedder as FrozenEstimator(embedder)."
            )
        self._log(f"fitting {type(embedder).__name__} on {X.shape[0]} rows")
        # y=None is passed on too: some fit methods (FrozenEstimator's) require it.
        return embedder.fit(X, y)

    def _choose_code_size(self, X, rng):
        """Code size of the default autoencoder, from the data.

        PCA codes of each size in ``_CODE_SIZES`` (below the number of
        features) stand in for the autoencoder's: on held-out rows of ``X``
        (the embedder's training rows; a sample of at most 20,000 of them,
        256 of which are the queries), the smallest candidates per neighbour
        reaching the target recall is measured by brute force among the
        codes, and the size with the least estimated cost per query wins
        (see ``_CODE_SIZES``). A size that reaches the target beats one that
        does not. When even the best code is estimated to cost more than
        exact search of the inputs themselves, fit warns and says so.
        """
        from sklearn.decomposition import PCA

        n_samples, n_features = X.shape
        sizes = [d for d in _CODE_SIZES if d < min(n_features, n_samples)]
        k = min(self.n_neighbors, n_samples - 2)
        if len(sizes) <= 1 or k < 1:
            return sizes[0] if sizes else max(1, min(n_features, n_samples) - 1)
        target = self.target_recall or _CODE_SIZE_RECALL
        # A sample stands for the data (bounded cost at any n); its first rows
        # are the queries.
        sample = X[rng.permutation(n_samples)[:_CODE_SIZE_SAMPLE]]
        queries = np.arange(min(_N_CODE_QUERIES, len(sample) // 2))
        pca = PCA(sizes[-1], random_state=draw_seed(rng)).fit(sample)
        Z = pca.transform(sample).astype(np.float32)
        _, true = drop_self(*exact_search(sample, sample[queries], k + 1), queries)
        widest = min(len(sample), _EFFORT_GRID[-1] * k + 1)
        costs = {}
        for d in sizes:
            Zd = np.ascontiguousarray(Z[:, :d])
            _, found = block_topk(np.ascontiguousarray(Zd[queries]), Zd, widest)
            for c in _EFFORT_GRID:
                if c * k >= widest:
                    break
                # Each query finds itself first: c * k candidates besides it.
                hits = (found[:, : c * k + 1, None] == true[:, None, :]).any(axis=1)
                if hits.mean() >= target:
                    costs[d] = (c * k * (_SCAN_COST * d + _RERANK_COST * n_features)
                                + _ENCODE_COST * n_features)
                    break
        chosen = min(costs, key=costs.get) if costs else sizes[-1]
        self._log(f"code size {chosen} (estimated costs per query: {costs})")
        brute = n_samples * n_features / _BRUTE_SPEEDUP
        if not costs or costs[chosen] > brute:
            warnings.warn(
                f"[{type(self).__name__}] no code of up to {sizes[-1]} components is "
                f"estimated to find the {k} nearest neighbours with recall {target} faster "
                f"than exact search of the {n_features} input features: consider "
                "embedder='passthrough', backend='brute'. Using a code of "
                f"{chosen} components; target_recall picks the effort.",
                UserWarning,
                stacklevel=4,
            )
        return chosen

    def _embed_fitted(self, X):
        """Codes of the fitted rows, encoded in batches (bounded temporaries)."""
        if self.embedder_ is None:
            return self._embed(X)[0]
        Z = None
        for rows in gen_batches(len(X), _EMBED_BATCH):
            part = self._embed(X[rows])[0]
            if Z is None:
                Z = np.empty((len(X), part.shape[1]), dtype=np.float32)
            Z[rows] = part
        return Z

    def _embed(self, X, queries=False):
        """Codes of ``X`` (float32) and which rows the index can rank.

        Non-finite codes of fitted points are an error. A query whose code is
        not finite or far beyond every fitted code (see
        :func:`~skknn._search.beyond_range`) gets zeros here and is searched
        exactly by the caller.
        """
        if self.embedder_ is None:
            # The rows centred and scaled (unit rows for cosine), float32.
            Z = returned = self._space.scaled_rows(X)
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                Z = self.embedder_.transform(X)
                if issparse(Z) or np.ndim(Z) != 2 or len(Z) != len(X):
                    raise ValueError(
                        f"embedder {type(self.embedder_).__name__} must return a dense 2-D "
                        f"array with one row per sample, got {type(Z).__name__} of shape "
                        f"{np.shape(Z)}."
                    )
                returned = np.asarray(Z)
                Z = np.array(returned, dtype=np.float32, order="C")
        finite = ~beyond_range(Z, self._code_sqmax) if queries else np.isfinite(Z).all(axis=1)
        if not finite.all():
            if not queries:
                name = type(self.embedder_).__name__
                if np.isfinite(returned).all():
                    raise ValueError(
                        f"embedder {name} returned values beyond float32's range (largest "
                        f"magnitude {np.abs(returned).max():.3g}); codes are indexed in "
                        "float32. Scale the embedder's input or output (e.g. a "
                        "StandardScaler before it)."
                    )
                raise ValueError(f"embedder {name} returned non-finite values.")
            Z = Z.copy() if Z is X else Z
            Z[~finite] = 0.0
        return Z, finite

    # -------------------------------------------------------------- search
    def _n_candidates(self, k, params, self_included=False):
        # A fitted row queried for its neighbours finds itself first: it
        # gets one candidate more, not candidates_per_neighbor more (else
        # recall_, measured on fitted rows, would overstate a new query's).
        n = params["candidates_per_neighbor"] * (k - self_included) + self_included
        return min(self.n_samples_fit_, max(k, n))

    def _candidates(self, q, n_candidates):
        """Candidate rows of each query, and which queries to search exactly.

        The mask marks queries the index cannot rank (their code is not
        finite or lies far beyond every fitted code): both ``kneighbors`` and
        ``radius_neighbors`` search them exactly. One thread: the callers run
        slices of queries side by side.
        """
        Zq, rankable = self._embed(self._space.unit_raw(q), queries=True)
        candidates = self._index.query(Zq, n_candidates, 1)
        candidates[~rankable] = -1
        return candidates, ~rankable

    def _knn(self, q, k, params, self_included=False):
        if self._exact:
            return exact_kneighbors(self._space, q, k, n_jobs=self._n_jobs)
        n_candidates = self._n_candidates(k, params, self_included)

        def one(rows):
            # Embedding, candidate search and re-ranking of a slice of the
            # queries, in one thread (see in_slices).
            part = q[rows]
            candidates, exact = self._candidates(part, n_candidates)
            dist, ind = rerank(self._space, part, candidates, k)
            if exact.any():
                dist[exact], ind[exact] = exact_kneighbors(self._space, part[exact], k)
            return dist, ind

        return stack_parts(in_slices(one, len(q), self._n_jobs))

    def _radius(self, q, radius, params):
        if self._exact:
            return exact_radius(self._space, q, radius, self._n_jobs)
        n_candidates = self._n_candidates(self.n_neighbors, params)

        def one(rows):
            part = q[rows]
            candidates, exact = self._candidates(part, n_candidates)
            dist, ind = candidate_radius(self._space, part, candidates, radius)
            # Where every candidate lies within the radius, the ball may hold
            # more points than were looked at (unless every fitted point was one).
            return research_cut_off(
                dist, ind, (candidates >= 0).sum(axis=1), self.n_samples_fit_,
                lambda redo: exact_radius(self._space, part[redo], radius), also=exact)

        return join_parts(in_slices(one, len(q), self._n_jobs))

    def _default_search_params(self):
        if self._exact:
            return {}
        return {"candidates_per_neighbor": self.candidates_per_neighbor}

    def _search_efforts(self):
        if self._exact:
            return [{}]
        efforts = []
        for c in _EFFORT_GRID:
            efforts.append({"candidates_per_neighbor": c})
            if c * self.n_neighbors >= self.n_samples_fit_:
                break
        return efforts


def _needs_y(estimator):
    """Whether ``estimator.fit`` needs targets (scikit-learn's tags say so).

    A FrozenEstimator never does (its fit does nothing), though it reports
    the tags of the estimator it wraps.
    """
    from sklearn.frozen import FrozenEstimator

    if isinstance(estimator, FrozenEstimator):
        return False
    try:
        return bool(estimator.__sklearn_tags__().target_tags.required)
    except AttributeError:
        return False
