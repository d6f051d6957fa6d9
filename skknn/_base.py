"""The neighbours API shared by the search estimators.

:class:`SearchBase` mirrors :class:`sklearn.neighbors.NearestNeighbors` and
:class:`sklearn.neighbors.KNeighborsTransformer`: validation, ``kneighbors``,
``kneighbors_graph``, ``radius_neighbors``, ``radius_neighbors_graph``,
``transform``, and the recall measurement and ``target_recall`` tuning done at
the end of ``fit``. A subclass supplies the index: ``_fit_index``, ``_knn``,
``_radius`` and ``_search_efforts``. Internally rows travel as
:class:`~skknn._metrics.Rows` of the fitted :class:`~skknn._metrics.Space`,
and distances in float64; positions of stored rows are mapped back to row
numbers at the public methods.
"""

import copy
import numbers
import warnings
from numbers import Integral, Real

import numpy as np
from scipy.sparse import csr_matrix, issparse
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state, gen_even_slices
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._kernels import load as load_kernel
from ._metrics import MAX_ABS_VALUE, SUPPORTED_METRICS, Space, resolve_metric
from ._search import (
    drop_self,
    exact_kneighbors,
    recall_at_k,
    reference_kneighbors,
    search_threads,
)

# Training rows on which ``recall_`` is measured (at most a fifth of the data
# once held out), and the data size from which they are held out of training
# the learned part of the index. 1,024 rows: recall@10 within about +-0.003
# (one standard error); the float64 reference for them costs ~3 s at 60k x 784.
_N_RECALL = 1024
_HOLD_OUT_FROM = 1280
# Queries handed to a subclass's ``_knn`` at once: bounds every per-query
# array (embeddings, candidate lists, routes) whatever the number of queries.
_QUERY_BATCH = 8192


def query_batches(n_queries, batch_size=_QUERY_BATCH):
    """Slices of the queries, of at most ``batch_size`` and of even sizes.

    Even, so that no batch is a small remainder: searches that batch work by
    cluster run larger, faster matrix products (10k Fashion-MNIST queries in
    one batch: 168 ms; as 8,192 + 1,808: 201 ms).
    """
    if n_queries == 0:
        return []
    return list(gen_even_slices(n_queries, -(-n_queries // batch_size)))


def _to_object_array(arrays):
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def _dense_rows(X, owner):
    """The dense rows of sparse ``X``, or a MemoryError where they cannot fit
    in the memory left on this machine: the OS would otherwise end the
    process while the copy is filled (NumPy's allocation itself succeeds,
    lazily, up to the machine's total memory)."""
    need = X.shape[0] * X.shape[1] * X.dtype.itemsize
    left = _memory_left()
    if left is not None and need > left:
        raise MemoryError(
            f"{owner} indexes dense rows: X is sparse with shape {X.shape}, and its dense copy "
            f"({need / 2**30:.1f} GiB) is more than the memory left on this machine "
            f"({left / 2**30:.1f} GiB). Reduce the features first, e.g. TruncatedSVD in a "
            "Pipeline."
        )
    return X.toarray()


def _memory_left():
    """Bytes of memory available (with free swap) where the OS says (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return sum(int(info[key].split()[0]) * 1024 for key in ("MemAvailable", "SwapFree"))
    except (OSError, KeyError, ValueError):
        return None


def _check_range(X):
    """``X``, or a ValueError where its values are beyond exact search's range."""
    if X.dtype == np.float64 and X.size and np.abs(X).max() > MAX_ABS_VALUE:
        raise ValueError(
            f"Input X has values of magnitude up to {np.abs(X).max():.3g}: beyond "
            f"{MAX_ABS_VALUE:.3g} squared distances overflow float64 and cannot be compared "
            "exactly. Rescale the data (e.g. divide by its largest value)."
        )
    return X


def fit_atomically(estimator, fit, *args):
    """Run ``fit(staging, *args)`` on a copy of ``estimator``; adopt it on success.

    The copy starts without the state of an earlier fit (the attributes that
    fit created, recorded in ``_fit_state_keys``). If ``fit`` raises or is
    interrupted, ``estimator`` is left exactly as before the call: fitted as
    before, or not fitted. Returns ``estimator``.
    """
    old_keys = getattr(estimator, "_fit_state_keys", ())
    staging = copy.copy(estimator)
    for key in old_keys:
        staging.__dict__.pop(key, None)
    before = set(vars(staging))
    fit(staging, *args)
    new_keys = tuple(sorted(set(vars(staging)) - before))
    for key in old_keys:
        estimator.__dict__.pop(key, None)
    estimator.__dict__.update({key: vars(staging)[key] for key in new_keys})
    estimator._fit_state_keys = new_keys
    return estimator


def first_reaching(name, efforts, measure, target, k, log=None):
    """The first search effort whose measured recall@``k`` reaches ``target``.

    ``measure(params)`` gives the recall of an effort; efforts are tried in
    order, and with ``target`` None only the first. If none reaches it, the
    last is kept and a warning says so. Returns ``(params, recall)``.
    """
    for params in efforts:
        recall = measure(params)
        if log is not None:
            log(f"recall@{k} = {recall:.4f} with {params}")
        if target is None or recall >= target:
            return params, recall
    warnings.warn(
        f"[{name}] target_recall={target} was not reached: the largest search effort "
        f"{params} gives recall@{k} = {recall:.4f} on the held-out sample.",
        UserWarning,
        stacklevel=3,  # the fit step that tunes, as before this helper
    )
    return params, recall


def array_bytes(obj, depth=6, _seen=None):
    """Bytes of the NumPy arrays an object holds, through attributes and containers.

    An estimator's ``__sizeof__``: Dask sizes the objects its workers hold
    with it, to decide where tasks run (and when to spill); without it a
    fitted index looks a few hundred bytes large and is copied freely.
    """
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if depth == 0:
        return 0
    if isinstance(obj, dict):
        return sum(array_bytes(v, depth - 1, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(array_bytes(v, depth - 1, seen) for v in obj)
    attributes = getattr(obj, "__dict__", None)
    return 0 if attributes is None else array_bytes(attributes, depth - 1, seen)


def check_graph_mode(mode):
    if mode not in ("connectivity", "distance"):
        raise ValueError(
            'Unsupported mode, must be one of "connectivity", '
            f'or "distance" but got "{mode}" instead'
        )


def knn_graph(dist, ind, mode, n_samples_fit):
    """The CSR graph of a k-neighbours answer (``dist``, ``ind``)."""
    data = np.ones(ind.size) if mode == "connectivity" else dist.ravel()
    indptr = np.arange(0, ind.size + 1, ind.shape[1])
    return csr_matrix((data, ind.ravel(), indptr), shape=(len(ind), n_samples_fit))


def radius_graph(dist, ind, mode, n_samples_fit):
    """The CSR graph of a radius answer (object arrays ``dist``, ``ind``)."""
    counts = np.array([len(i) for i in ind], dtype=np.intp)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    cols = np.concatenate(list(ind)) if len(ind) else np.empty(0, dtype=np.intp)
    if mode == "connectivity":
        data = np.ones(len(cols))
    else:
        data = np.concatenate(list(dist)) if len(dist) else np.empty(0)
    return csr_matrix((data, cols, indptr), shape=(len(ind), n_samples_fit))


class NeighborsGraphMixin(TransformerMixin):
    """Graphs and the ``KNeighborsTransformer`` interface from ``kneighbors``
    and ``radius_neighbors``; the class supplies those, ``n_neighbors``,
    ``mode`` and ``n_samples_fit_``."""

    def _check_n_neighbors(self, n_neighbors):
        if n_neighbors is None:
            return self.n_neighbors
        if not isinstance(n_neighbors, numbers.Integral) or isinstance(n_neighbors, bool):
            raise TypeError(
                f"n_neighbors does not take {type(n_neighbors)} value, enter integer value"
            )
        if n_neighbors <= 0:
            raise ValueError(f"Expected n_neighbors > 0. Got {n_neighbors}")
        return int(n_neighbors)

    def _check_radius(self, radius, return_distance, sort_results):
        """The radius to search (the constructor's if None), as a float."""
        if sort_results and not return_distance:
            raise ValueError("return_distance must be True if sort_results is True.")
        radius = self.radius if radius is None else radius
        if not isinstance(radius, Real) or isinstance(radius, bool) or not radius >= 0:
            raise ValueError(f"radius must be a non-negative number, got {radius!r}.")
        return float(radius)

    def kneighbors_graph(self, X=None, n_neighbors=None, mode="connectivity"):
        """Sparse graph of the k nearest neighbours of each query point.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), default=None
            The query points; the indexed points (each not its own neighbour)
            if None.
        n_neighbors : int, default=None
            Number of neighbours; the constructor's ``n_neighbors`` if None.
        mode : {'connectivity', 'distance'}, default='connectivity'
            Edge weights: ones, or exact input-space distances.

        Returns
        -------
        A : sparse matrix of shape (n_queries, n_samples_fit)
            CSR matrix; ``A[i, j]`` is the weight of the edge from query ``i``
            to fitted point ``j``.
        """
        check_is_fitted(self)
        check_graph_mode(mode)
        n_neighbors = self._check_n_neighbors(n_neighbors)
        dist, ind = self.kneighbors(X, n_neighbors, return_distance=True)
        return self._graph_of(knn_graph, dist, ind, mode)

    def radius_neighbors_graph(self, X=None, radius=None, mode="connectivity", sort_results=False):
        """Sparse graph of the neighbours within ``radius`` of each query point.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), default=None
            The query points; the indexed points (each not its own neighbour)
            if None.
        radius : float, default=None
            Limiting distance (inclusive); the constructor's ``radius`` if None.
        mode : {'connectivity', 'distance'}, default='connectivity'
            Edge weights: ones, or exact input-space distances.
        sort_results : bool, default=False
            Sort each row's entries by distance (``mode='distance'`` only).

        Returns
        -------
        A : sparse matrix of shape (n_queries, n_samples_fit)
            CSR matrix of the edges.
        """
        check_is_fitted(self)
        check_graph_mode(mode)
        dist, ind = self.radius_neighbors(
            X, radius, return_distance=True, sort_results=sort_results and mode == "distance"
        )
        return self._graph_of(radius_graph, dist, ind, mode)

    def _graph_of(self, build, dist, ind, mode):
        """The graph ``build`` makes of an answer (a class whose answers may be
        lazy builds it lazily)."""
        return build(dist, ind, mode, self.n_samples_fit_)

    def transform(self, X):
        """The k-neighbours graph of ``X``, as ``KNeighborsTransformer`` does.

        In ``mode='distance'`` each row holds ``n_neighbors + 1`` entries, so
        that the graph still has ``n_neighbors`` neighbours per point when a
        query is one of the fitted points (at distance zero from itself).

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            The query points.

        Returns
        -------
        Xt : sparse matrix of shape (n_queries, n_samples_fit)
            CSR graph with edge weights given by ``mode``.
        """
        check_is_fitted(self)
        add_one = self.mode == "distance"
        return self.kneighbors_graph(X, mode=self.mode, n_neighbors=self.n_neighbors + add_one)

    def fit_transform(self, X, y=None):
        """Fit to ``X``, then return its k-neighbours graph (see :meth:`transform`).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,), default=None
            Passed on to ``fit``.

        Returns
        -------
        Xt : sparse matrix of shape (n_samples, n_samples)
            CSR graph with edge weights given by ``mode``.
        """
        return self.fit(X, y).transform(X)

    @property
    def _n_features_out(self):
        return self.n_samples_fit_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        tags.input_tags.sparse = True
        return tags


class SearchBase(ClassNamePrefixFeaturesOutMixin, NeighborsGraphMixin, BaseEstimator):
    """Base class of the neighbours search estimators. Not for direct use."""

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "radius": [Interval(Real, 0, None, closed="both")],
        "metric": [StrOptions(set(SUPPORTED_METRICS))],
        "p": [Interval(Real, 1, None, closed="both")],
        "metric_params": [dict, None],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "mode": [StrOptions({"distance", "connectivity"})],
        "target_recall": [Interval(Real, 0, 1, closed="right"), None],
        "algorithm": [StrOptions({"auto", "brute", "kd_tree", "ball_tree"})],
        "leaf_size": [Interval(Integral, 1, None, closed="left")],
    }
    # The sentence of the algorithm != 'auto' error that says how to search
    # exactly with this estimator.
    _EXACT_HINT = ""
    # Most queries searched at once (see query_batches).
    _query_batch = _QUERY_BATCH

    def __sizeof__(self):
        return object.__sizeof__(self) + array_bytes(self.__dict__)

    @property
    def _n_jobs(self):
        """Threads of the search, from the current ``n_jobs`` (as scikit-learn
        reads ``n_jobs`` at query time, ``set_params(n_jobs=...)`` after fit
        takes effect)."""
        return search_threads(self.n_jobs)

    # ------------------------------------------------------------------ fit
    def _fit(self, X, y=None):
        """Fit atomically: see :func:`fit_atomically`."""
        return fit_atomically(self, type(self)._fit_state, X, y)

    def _fit_state(self, X, y):
        """Validate, build the index, then measure (and tune) recall."""
        if self.algorithm != "auto":
            raise ValueError(
                f"algorithm={self.algorithm!r} selects the exact search structure of "
                f"NearestNeighbors; {type(self).__name__} searches its own way. "
                f"{self._EXACT_HINT}"
            )
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32],
                          order="C")
        # The index keeps dense rows (its learned parts and kernels need them).
        X = _check_range(_dense_rows(X, type(self).__name__) if issparse(X) else X)
        if y is not None:
            y = np.asarray(y)
            if len(y) != len(X):
                raise ValueError(f"y has {len(y)} rows but X has {len(X)}.")
        self._metric = resolve_metric(self.metric, self.p, self.metric_params)
        self.effective_metric_ = self._metric.sklearn_name
        self.effective_metric_params_ = self._metric.sklearn_params
        self.n_samples_fit_ = X.shape[0]
        self._space = Space(self._metric, X)
        rng = check_random_state(self.random_state)
        eval_rows, train_rows = self._recall_rows(X.shape[0], rng)
        # Kept so that ShardedNeighbors measures its recall on rows no shard trained on.
        self._eval_rows = eval_rows
        self._fit_index(X, y, train_rows, rng)
        # The kernel started loading with the space; queries must not wait.
        load_kernel()
        self._tune_search(eval_rows)

    @staticmethod
    def _recall_rows(n_samples, rng):
        """Rows to measure recall on, and rows to train the learned part on."""
        perm = rng.permutation(n_samples)
        if n_samples < _HOLD_OUT_FROM:
            return np.sort(perm[:_N_RECALL]), np.arange(n_samples)
        n_eval = min(_N_RECALL, n_samples // 5)
        eval_rows = np.sort(perm[:n_eval])
        return eval_rows, np.sort(perm[n_eval:])

    def _tune_search(self, eval_rows):
        """Set ``search_params_`` and ``recall_`` on the held-out rows."""
        efforts = self._search_efforts()
        k = min(self.n_neighbors, self.n_samples_fit_ - 1)
        if k < 1:
            # A single fitted point has no neighbours to miss.
            self.search_params_, self.recall_ = self._default_search_params(), 1.0
            return
        # The reference is float64 from differences, by a route that shares no
        # ranking rows, error bound or kernel with the searches it measures.
        q = self._space.fitted_rows(eval_rows)
        dist, ind = reference_kneighbors(self._space, q, k + 1)
        exact, exact_ind = drop_self(dist, self._space.to_ids(ind), eval_rows)
        if self.target_recall is None:
            efforts = [self._default_search_params()]

        def measure(params):
            found = self._search(q.__getitem__, len(q), k + 1, params, self_included=True)
            found, found_ind = drop_self(*found, eval_rows)
            return recall_at_k(found, exact, approx_ind=found_ind, exact_ind=exact_ind)

        self.search_params_, self.recall_ = first_reaching(
            type(self).__name__, efforts, measure, self.target_recall, k, self._log)

    def _log(self, message):
        if self.verbose:
            print(f"[{type(self).__name__}] {message}", flush=True)

    # -------------------------------------------------------------- queries
    def _queries(self, X):
        """Validated queries and a function giving :class:`Rows` of a slice of them.

        ``X=None`` queries the fitted rows. Sparse queries stay sparse until
        a slice of them is searched, so that memory stays bounded.
        """
        if X is None:
            return self.n_samples_fit_, self._space.fitted_rows
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32],
                          order="C", reset=False)

        def rows_of(batch):
            part = X[batch]
            part = part.toarray() if issparse(part) else part
            # validate_data checked the rows as given; a cast may overflow.
            if part.dtype != self._space.dtype:
                with np.errstate(over="ignore"):
                    part = part.astype(self._space.dtype)
                if not np.isfinite(part).all():
                    raise ValueError(
                        f"Input X has values too large for {self._space.dtype}, the dtype of "
                        "the data this estimator was fitted on."
                    )
            return self._space.rows(_check_range(part))

        return X.shape[0], rows_of

    def _check_search_params(self, params):
        """``search_params_`` may be reassigned by users: check it before use."""
        expected = self._default_search_params()
        if not expected and params != {}:
            raise ValueError(
                f"This {type(self).__name__} searches exactly: it has no search effort to "
                f"set, and search_params_ must be {{}}, got {params!r}."
            )
        if not isinstance(params, dict) or set(params) != set(expected) or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
            for v in params.values()
        ):
            example = {key: 1 for key in expected}
            raise ValueError(
                f"search_params_ must be a dict with the keys {sorted(expected)} and positive "
                f"integer values (e.g. {example}), got {params!r}."
            )

    def _search(self, rows_of, n_queries, k, params, self_included=False):
        """Top-``k`` in batches; queries the index could not fill are searched exactly.

        ``rows_of(slice)`` gives the :class:`Rows` of those queries. With
        ``self_included``, the queries are fitted rows and ``k`` counts each
        one itself (the caller drops it): the search effort is that of
        ``k - 1`` neighbours, as for a new query. Returns float64 distances
        and row numbers of the fitted data.
        """
        self._check_search_params(params)
        dists, inds = [], []
        for batch in query_batches(n_queries, self._query_batch):
            q = rows_of(batch)
            dist, ind = self._knn(q, k, params, self_included)
            short = np.flatnonzero((ind < 0).any(axis=1))
            if len(short):
                dist[short], ind[short] = exact_kneighbors(
                    self._space, q[short], k, n_jobs=self._n_jobs
                )
            dists.append(dist)
            inds.append(self._space.to_ids(ind))
        if not dists:
            return np.empty((0, k)), np.empty((0, k), dtype=np.intp)
        return np.vstack(dists), np.vstack(inds)

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        """Find the k nearest neighbours of each query point.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), default=None
            The query points. If None, the neighbours of every indexed point
            are returned, and a point is not its own neighbour.
        n_neighbors : int, default=None
            Number of neighbours; the constructor's ``n_neighbors`` if None.
        return_distance : bool, default=True
            Whether to return the distances.

        Returns
        -------
        neigh_dist : ndarray of shape (n_queries, n_neighbors)
            Exact input-space distances to the neighbours, ascending. Only
            present if ``return_distance=True``.
        neigh_ind : ndarray of shape (n_queries, n_neighbors)
            Indices of the neighbours in the fitted data.
        """
        check_is_fitted(self)
        n_neighbors = self._check_n_neighbors(n_neighbors)
        query_is_train = X is None
        n_queries, rows_of = self._queries(X)
        if n_neighbors + query_is_train > self.n_samples_fit_:
            inequality = "n_neighbors < n_samples_fit" if query_is_train else (
                "n_neighbors <= n_samples_fit"
            )
            raise ValueError(
                f"Expected {inequality}, but n_neighbors = {n_neighbors}, "
                f"n_samples_fit = {self.n_samples_fit_}, n_samples = {n_queries}"
            )
        dist, ind = self._search(rows_of, n_queries, n_neighbors + query_is_train,
                                 self.search_params_, self_included=query_is_train)
        if query_is_train:
            dist, ind = drop_self(dist, ind, np.arange(n_queries))
        dist = dist.astype(self._space.out_dtype)
        return (dist, ind) if return_distance else ind

    def radius_neighbors(self, X=None, radius=None, return_distance=True, sort_results=False):
        """Find the neighbours within ``radius`` of each query point.

        Searches the same candidates as :meth:`kneighbors` (exact in the
        estimator's exact setting), so in an approximate setting points
        outside the candidates are not found.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), default=None
            The query points; the indexed points (each not its own neighbour)
            if None.
        radius : float, default=None
            Limiting distance (inclusive); the constructor's ``radius`` if None.
        return_distance : bool, default=True
            Whether to return the distances.
        sort_results : bool, default=False
            Sort each query's neighbours by distance (needs
            ``return_distance=True``).

        Returns
        -------
        neigh_dist : ndarray of shape (n_queries,) of arrays
            Exact distances; only present if ``return_distance=True``.
        neigh_ind : ndarray of shape (n_queries,) of arrays
            Indices of the neighbours in the fitted data.
        """
        check_is_fitted(self)
        radius = self._check_radius(radius, return_distance, sort_results)
        n_queries, rows_of = self._queries(X)
        self._check_search_params(self.search_params_)
        dists, inds = [], []
        for d_row, i_row in self._radius_rows(rows_of, n_queries, radius, self.search_params_):
            order = np.argsort(i_row, kind="stable")  # in row-number order
            dists.append(d_row[order].astype(self._space.out_dtype))
            inds.append(i_row[order])
        for row in range(n_queries):
            keep = np.ones(len(inds[row]), dtype=bool)
            if X is None:
                keep = inds[row] != row
            if sort_results:
                order = np.lexsort((inds[row][keep], dists[row][keep]))
                keep = np.flatnonzero(keep)[order]
            dists[row], inds[row] = dists[row][keep], inds[row][keep]
        inds = _to_object_array(inds)
        return (_to_object_array(dists), inds) if return_distance else inds

    def _radius_rows(self, rows_of, n_queries, radius, params):
        """Per query, in order: float64 distances and fitted row numbers of the
        rows found within ``radius`` (in the search's order)."""
        for batch in query_batches(n_queries, self._query_batch):
            d, i = self._radius(rows_of(batch), radius, params)
            for d_row, i_row in zip(d, i):
                yield d_row, self._space.to_ids(i_row)

    # ------------------------------------------------ subclass obligations
    def _fit_index(self, X, y, train_rows, rng):  # pragma: no cover - abstract
        """Build the index of ``self._space`` (``X``: the validated input rows)."""
        raise NotImplementedError

    def _knn(self, q, k, params, self_included=False):  # pragma: no cover - abstract
        """Sorted top-``k`` of query :class:`Rows`, float64 distances; ``-1`` where none.

        ``self_included``: the queries are fitted rows and ``k`` counts each
        one itself (see :meth:`_search`).
        """
        raise NotImplementedError

    def _radius(self, q, radius, params):  # pragma: no cover - abstract
        """Per-query arrays of float64 distances and indices within ``radius``."""
        raise NotImplementedError

    def _search_efforts(self):  # pragma: no cover - abstract
        """Search settings in increasing effort, tried by ``target_recall``."""
        raise NotImplementedError

    def _default_search_params(self):  # pragma: no cover - abstract
        """Search settings used when ``target_recall`` is None."""
        raise NotImplementedError
