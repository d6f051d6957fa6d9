"""ShardedNeighbors: one search estimator per shard of the rows, on Dask workers.

The rows are split into shards: contiguous slices, or whole clusters of rows
(:mod:`._placement`). A clone of the estimator is fitted on each shard by a
Dask task, on the worker that holds the shard's rows, and the fitted shard
stays there. A chunk of queries goes to the shards (:mod:`._fan_out`, the
tasks in :mod:`._shard_tasks`); each shard answers with exact float64
distances and its own row numbers, and the top ``k`` are merged with the row
numbers mapped to rows of the whole data.

Dask (``distributed``) is imported only when first needed.
"""

import itertools
import numbers

import numpy as np
from scipy.sparse import csr_matrix, issparse
from sklearn.base import BaseEstimator, clone
from sklearn.utils import check_random_state, gen_even_slices
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.random import sample_without_replacement
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import (
    _N_RECALL,
    NeighborsGraphMixin,
    SearchBase,
    first_reaching,
    fit_atomically,
    query_batches,
)
from ._dask_setup import _distributed
from ._fan_out import ShardFanOut, ShardLostError, _token, submit_copy, unpin
from ._placement import fit_router, probe_grid
from ._search import drop_self, recall_at_k, stack_parts
from ._shard_tasks import (
    _cut_off,
    _finish_radius,
    _fit_shard,
    _knn_new,
    _merge_knn,
    _radius_chunk,
    _radius_new,
    _split,
    _summary,
    _take,
    _to_global,
    lost_message,
)

# placement='clusters': rows the coarse centres are fitted on; the share of
# the recall target's misses the routing may cause when choosing
# coarse_probe_ (and the recall it keeps with no target).
_PLACEMENT_SAMPLE = 20_000
_ROUTING_SHARE = 0.25
_ROUTING_RECALL = 0.995


# ------------------------------------------------------------ the estimator
class ShardedNeighbors(ShardFanOut, NeighborsGraphMixin, BaseEstimator):
    """Nearest neighbours over shards of the data, one search estimator per shard, on Dask.

    The rows are split into ``n_shards`` shards, and a clone of
    ``estimator`` is fitted on each by a task on a Dask worker; the shard's
    rows and its fitted index stay on that worker. Queries go to the shards
    in chunks; each shard returns its ``k`` nearest with exact distances, and
    the ``k`` nearest of those are returned, with indices of rows of the
    whole fitted data. In the estimator's exact setting
    (``LearnedNeighbors(embedder='passthrough', backend='brute')``,
    ``ClusterFilteredKNN(n_probe=n_clusters)``), with every shard visited,
    the answer equals :class:`~sklearn.neighbors.NearestNeighbors` on the
    whole data.

    Needs ``dask[distributed]`` (``pip install 'skknn[dask]'``). The same
    code runs on a :class:`~distributed.LocalCluster` and on a real cluster:
    pass its :class:`~distributed.Client`, or create one before ``fit`` (the
    default client is used).

    Parameters
    ----------
    estimator : LearnedNeighbors or ClusterFilteredKNN
        The search estimator fitted on each shard (cloned). Its
        ``n_neighbors``, ``radius``, ``mode`` and ``target_recall`` are those
        of the sharded search: ``target_recall`` is reached by the merged
        answer, not shard by shard. Shard ``i`` gets its own integer
        ``random_state`` drawn from the estimator's.
    n_shards : int, default=None
        Number of shards; by default one per worker of the client.
    client : distributed.Client, default=None
        The Dask client; None means the current default client
        (:func:`distributed.get_client`).
    replicas : int, default=1
        Workers holding each fitted shard, each a different worker (so at
        most the number of workers). A copy lost with its worker is copied
        again by Dask from a copy left, and the queries it was in (NumPy or
        lazy) complete: with ``replicas=2``, queries survive the loss of any
        one worker, at twice the cluster memory. Where no copy of a shard
        is left, a shard fitted from a NumPy array cannot be recomputed (its
        rows were sent from this process) and queries raise
        :class:`ShardLostError`; one fitted from a dask array is fitted again
        from the array's chunks. Replicas also share the queries: chunks of
        queries take turns over the copies of each shard, so that
        ``n_shards=1, replicas=2`` on two workers answers about twice the
        queries per second of one (the whole index on each).
    placement : {'rows', 'clusters'}, default='rows'
        How the rows are split. ``'rows'``: contiguous slices, and every
        query visits every shard. ``'clusters'``: coarse k-means centres,
        fitted on a sample of up to 20,000 rows, are grouped into one
        balanced group per shard by METIS (cutting few of the sample's k-NN
        edges), and each row goes to the shard of its nearest centre; a query
        then visits only the shards of its ``coarse_probe_`` nearest centres.
        Fewer shard searches per query, for neighbours missed on shards not
        visited: ``fit`` chooses ``coarse_probe_`` with the shards' search
        effort so that the measured recall of the merged answer reaches
        ``target_recall`` (with no target, so that the routing alone keeps
        99.5% of the held-out rows' neighbours). Probing every centre
        (``coarse_probe_ = n_coarse_centres_``) visits every shard. More
        than one shard needs ``pymetis`` (``pip install 'skknn[graph]'``).

    Attributes
    ----------
    n_shards_ : int
        Number of shards.
    shard_offsets_ : ndarray of int or None
        With ``placement='rows'``, the ``n_shards_ + 1`` boundaries of the
        shards: shard ``i`` holds the fitted rows ``shard_offsets_[i]`` to
        ``shard_offsets_[i + 1] - 1``. None with ``'clusters'``.
    shard_rows_ : list of ndarray or None
        With ``placement='clusters'``, the fitted rows each shard holds,
        ascending. None with ``'rows'``.
    n_coarse_centres_ : int or None
        With ``placement='clusters'``, the number of coarse centres.
    coarse_probe_ : int or None
        With ``placement='clusters'``, the coarse centres each query probes
        (it visits their shards); chosen by ``fit``, and may be set. None
        with ``'rows'``.
    n_samples_fit_ : int
        Number of fitted rows.
    n_features_in_ : int
        Number of features.
    effective_metric_ : str
        The metric used, in scikit-learn's naming.
    effective_metric_params_ : dict
        Its parameters.
    recall_ : float
        Recall@n_neighbors of the merged answer, on rows held out of every
        shard's learned part (up to 1,024 in all), against an exact float64
        search of every shard.
    search_params_ : list of dict
        Each shard's search effort (that of the estimator's
        ``search_params_``), chosen together to reach ``target_recall``.

    See Also
    --------
    LearnedNeighbors, ClusterFilteredKNN : the estimators fitted per shard.

    Notes
    -----
    Queries as a NumPy array are sent in chunks from this process (answers
    are NumPy arrays). Queries as a dask array give dask arrays, lazily, one
    task per chunk and shard, so that any number of query rows streams in
    bounded memory: ``radius_neighbors`` gives dask arrays of object arrays,
    and the graphs and ``transform`` dask arrays of CSR blocks (one per chunk
    of queries). A fitted ShardedNeighbors holds its shards on the
    cluster: it cannot be pickled; :meth:`gather_shards` brings the fitted
    shard estimators to this process.

    Examples
    --------
    >>> from distributed import Client, LocalCluster  # doctest: +SKIP
    >>> from skknn import ClusterFilteredKNN, ShardedNeighbors  # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
    >>> search = ShardedNeighbors(ClusterFilteredKNN(n_neighbors=10)).fit(X)  # doctest: +SKIP
    >>> dist, ind = search.kneighbors(Q)  # doctest: +SKIP
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "kneighbors"])],
        "n_shards": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "client": "no_validation",
        "replicas": [Interval(numbers.Integral, 1, None, closed="left")],
        "placement": [StrOptions({"rows", "clusters"})],
    }

    def __init__(self, estimator, *, n_shards=None, client=None, replicas=1, placement="rows"):
        self.estimator = estimator
        self.n_shards = n_shards
        self.client = client
        self.replicas = replicas
        self.placement = placement

    def __sklearn_clone__(self):
        # A client is a connection, shared by clones rather than copied.
        params = {name: clone(value, safe=False) if name != "client" else value
                  for name, value in self.get_params(deep=False).items()}
        return type(self)(**params)

    def __copy__(self):
        # A shallow copy shares the client and the shards (fit stages on one).
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __getstate__(self):
        if hasattr(self, "_shards") or self.client is not None:
            raise TypeError(
                "A ShardedNeighbors with a client, or fitted, cannot be pickled: its shards "
                "live on the Dask workers. Use gather_shards() to bring the fitted shard "
                "estimators here."
            )
        return self.__dict__

    # Parameters of the sharded search are those of the estimator.
    @property
    def n_neighbors(self):
        return self.estimator.n_neighbors

    @property
    def radius(self):
        return self.estimator.radius

    @property
    def mode(self):
        return self.estimator.mode

    def _get_client(self):
        distributed = _distributed()
        if self.client is not None:
            if not isinstance(self.client, distributed.Client):
                raise TypeError(
                    f"client must be a distributed.Client or None, got {self.client!r}."
                )
            return self.client
        try:
            return distributed.get_client()
        except ValueError as exc:
            raise ValueError(
                "ShardedNeighbors needs a Dask client: pass client=Client(...) or create "
                "one first (distributed.Client() starts a LocalCluster on this machine)."
            ) from exc

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None):
        """Fit a clone of the estimator on each shard of ``X``, on the workers.

        Parameters
        ----------
        X : {array-like, sparse matrix, dask array} of shape (n_samples, n_features)
            Training data. A dask array is split into shards on the cluster
            (its rows need not pass through this process).
        y : array-like of shape (n_samples,), default=None
            Passed on to each shard's ``fit`` (for a supervised embedder).

        Returns
        -------
        self : ShardedNeighbors
            The fitted estimator.
        """
        self._validate_params()
        return fit_atomically(self, type(self)._fit_state, X, y)

    def _fit_state(self, X, y):
        if not isinstance(self.estimator, SearchBase):
            raise TypeError(
                "estimator must be a skknn search estimator (LearnedNeighbors or "
                f"ClusterFilteredKNN), got {type(self.estimator).__name__}."
            )
        client = self._get_client()
        from_dask = _is_dask_array(X)
        if from_dask:
            if X.ndim == 2 and np.isnan(X.shape[0]):
                X = X.compute_chunk_sizes()
            X = _check_dask_array(X)
            self.n_features_in_ = X.shape[1]
        else:
            X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32],
                              order="C")
        n_samples = X.shape[0]
        # Asked of the scheduler now: scheduler_info()'s cached copy may be
        # one a periodic refresh made without the workers (distributed 2026.8).
        workers = sorted(client.nthreads())
        n_shards = self._check_layout(n_samples, workers)
        if y is not None:
            y = np.asarray(y)
            if len(y) != n_samples:
                raise ValueError(f"y has {len(y)} rows but X has {n_samples}.")
        rng = check_random_state(self.estimator.random_state)
        seeds = rng.randint(np.iinfo(np.int32).max, size=n_shards)
        router, offsets = None, None
        if self.placement == "clusters":
            router, row_shard = self._place(X, n_shards, int(rng.randint(np.iinfo(np.int32).max)),
                                            from_dask)
            slices = router.shard_rows
        else:
            slices = list(gen_even_slices(n_samples, n_shards))
            offsets = np.array([s.start for s in slices] + [n_samples])
        shards = self._fit_shards(client, workers, X, y, slices, seeds, from_dask)
        self._client, self._shards, self._from_dask = client, shards, from_dask
        self._turns = itertools.count()
        self._router, self._router_future = router, None
        summaries = client.gather([self._on_shard(_summary, copies[0]) for copies in shards])
        self.n_shards_ = n_shards
        self.shard_offsets_ = offsets
        self.shard_rows_ = None if router is None else router.shard_rows
        self.n_coarse_centres_ = None if router is None else router.n_centres
        self.coarse_probe_ = None
        if router is not None:
            # Each fitted row's shard, and its place in it.
            self._row_shard = row_shard
            self._row_local = np.empty(n_samples, dtype=np.intp)
            for rows in router.shard_rows:
                self._row_local[rows] = np.arange(len(rows))
        self.n_samples_fit_ = n_samples
        self._dtype = np.dtype(summaries[0]["out_dtype"])  # of returned distances
        self.effective_metric_, self.effective_metric_params_ = summaries[0]["metric"]
        self._tune(summaries, rng)

    def _check_layout(self, n_samples, workers):
        """The number of shards, checked with ``replicas`` against the data and workers."""
        n_shards = self.n_shards or len(workers)
        if n_shards > n_samples:
            raise ValueError(
                f"n_shards={n_shards} is more than the rows of X (n_samples={n_samples}): each "
                "shard needs at least one row."
            )
        if self.replicas > len(workers):
            raise ValueError(
                f"replicas={self.replicas} needs as many workers, each holding one copy; the "
                f"cluster has {len(workers)}."
            )
        return n_shards

    def _fit_shards(self, client, workers, X, y, slices, seeds, from_dask):
        """Send each shard's rows to a worker and fit a clone of the estimator
        there; each shard's copies (:meth:`_make_copies`), once all are made."""
        if from_dask:
            # One chunk of rows per shard, computed on the cluster.
            if isinstance(slices[0], slice):
                X = X.rechunk((tuple(s.stop - s.start for s in slices), (X.shape[1],)))
                parts = list(X.to_delayed().ravel())
            else:
                parts = [X[rows].rechunk({0: -1}).to_delayed().ravel()[0] for rows in slices]
            shards_data = client.compute(parts)
        else:
            shards_data = [client.scatter(X[s], workers=[workers[i % len(workers)]],
                                          hash=False) for i, s in enumerate(slices)]
        fits = []
        for i, (s, data) in enumerate(zip(slices, shards_data)):
            est = clone(self.estimator).set_params(random_state=int(seeds[i]),
                                                    target_recall=None)
            args = (est, data) if y is None else (est, data, y[s])
            # Shards spread over the workers (where their rows were sent).
            fits.append(client.submit(_fit_shard, *args, pure=False,
                                      key=f"skknn-fit-{i}-{_token()}",
                                      workers=[workers[i % len(workers)]],
                                      allow_other_workers=from_dask))
        del shards_data
        try:
            self._wait_for_fits(fits)
            shards = self._make_copies(client, workers, fits, slices, from_dask)
            self._wait_for_fits([copy for copies in shards for copy in copies])
            # Placed, a copy lost with its worker may be recovered anywhere.
            unpin(client, [copy for copies in shards for copy in copies])
        except self._lost() as exc:
            raise ShardLostError(
                "A worker was lost while the shards were fitted; nothing was changed. Fit "
                "again."
            ) from exc
        return shards

    def _make_copies(self, client, workers, fits, slices, from_dask):
        """Each shard's ``replicas`` copies, each on a worker of its own.

        A copy is a task without dependencies that takes the fitted shard
        from a worker holding it (:func:`._shard_tasks._copy_of_shard`; the
        first copy is the fitted object itself, on the worker that fitted
        it). Where a copy is lost with its worker, Dask runs its task again
        on another worker, which copies a copy that survived: NumPy queries
        and lazy (dask-array) queries alike then go on. A shard fitted from a
        dask array is its own first copy: Dask fits it again from the array's
        chunks, and its other copies wait for that where none is left.
        """
        token, shards, self._copy_prefixes = _token(), [], []
        for i, (fit, rows) in enumerate(zip(fits, slices)):
            prefix = f"skknn-{token}-shard-{i}-"
            lost = lost_message(i, rows, self.placement == "rows")
            copies = [fit] if from_dask else []
            for r in range(len(copies), self.replicas):
                copies.append(submit_copy(client, prefix, lost, fit.key,
                                          fit.key if from_dask else None,
                                          workers[(i + r) % len(workers)]))
            shards.append(copies)
            self._copy_prefixes.append(prefix)
        return shards

    def _place(self, X, n_shards, seed, from_dask):
        """``placement='clusters'``: the router, with the rows of each shard, and
        the shard of each row."""
        n_samples = X.shape[0]
        sample = np.sort(sample_without_replacement(
            n_samples, min(n_samples, _PLACEMENT_SAMPLE), random_state=seed))
        S = X[sample].compute() if from_dask else X[sample]
        S = S.toarray() if issparse(S) else S
        router = fit_router(S, n_shards, seed,
                            normalize=getattr(self.estimator, "metric", None) == "cosine")
        if from_dask:
            shard_of_row = X.map_blocks(router.shard_of, drop_axis=1, dtype=np.intp).compute()
        else:
            shard_of_row = router.shard_of(X)
        router.set_rows(shard_of_row)
        sizes = [len(rows) for rows in router.shard_rows]
        if min(sizes) == 0:
            raise ValueError(
                f"placement='clusters' left a shard without rows (shard sizes {sizes}): the "
                "data has too few distinct clusters for n_shards={n_shards}. Use fewer shards "
                "or placement='rows'."
            )
        return router, shard_of_row

    @staticmethod
    def _wait_for_fits(shards):
        """Wait for the shard fits (on the workers); raise the error of one that failed."""
        _distributed().wait(shards)
        for shard in shards:
            if shard.status != "finished":
                shard.result()  # raises its error, or the loss of its worker

    def _tune(self, summaries, rng):
        """Measure ``recall_`` of the merged answer; reach ``target_recall``."""
        k = min(self.n_neighbors, self.n_samples_fit_ - 1)
        defaults = [s["default"] for s in summaries]
        if k < 1:
            self.search_params_, self.recall_ = defaults, 1.0
            self.coarse_probe_ = self.n_coarse_centres_
            return
        # Rows held out of the shards' learned parts, as global rows.
        held_out = np.sort(np.concatenate([_to_global(s["eval_rows"], m)
                                           for s, m in zip(summaries, self._maps_of_shards())]))
        if len(held_out) > _N_RECALL:
            held_out = np.sort(rng.choice(held_out, _N_RECALL, replace=False))
        Q = self._fitted_rows(held_out)
        exact_dist, exact_ind = drop_self(*self._run("reference", ("new", Q), k + 1), held_out)
        target = self.estimator.target_recall
        # Effort levels: each shard's i-th effort (its last once it has no more).
        efforts = [s["efforts"] for s in summaries]
        levels = [defaults] if target is None else [
            [e[min(level, len(e) - 1)] for e in efforts]
            for level in range(max(len(e) for e in efforts))]
        # The shards' efforts with the fewest centres probed, then more
        # centres at the largest effort.
        probes = [None] if self._router is None else self._coarse_probes(Q, exact_ind, target)
        levels = [(level, probes[0]) for level in levels] + [
            (levels[-1], probe) for probe in probes[1:]]

        def measure(level):
            self.search_params_, self.coarse_probe_ = level
            dist, ind = self._kneighbors_rows(held_out, k, level[0])
            return recall_at_k(dist, exact_dist, approx_ind=ind, exact_ind=exact_ind)

        (self.search_params_, self.coarse_probe_), self.recall_ = first_reaching(
            "ShardedNeighbors", levels, measure, target, k)

    def _coarse_probes(self, Q, exact_ind, target):
        """Centres a query may probe, from the fewest with which the shards
        visited hold enough of the held-out rows' exact neighbours: all but
        ``_ROUTING_SHARE`` of the misses ``target_recall`` allows
        (``_ROUTING_RECALL`` of them with no target)."""
        need = _ROUTING_RECALL if target is None else 1 - (1 - target) * _ROUTING_SHARE
        found = exact_ind >= 0
        shard = np.where(found, self._row_shard[np.maximum(exact_ind, 0)], 0)
        grid = probe_grid(self._router.n_centres)

        def kept(probe):
            visited = np.take_along_axis(self._router.visits(Q, probe), shard, 1)
            return visited[found].mean() if found.any() else 1.0

        start = next((j for j, probe in enumerate(grid) if kept(probe) >= need), len(grid) - 1)
        return grid[start:]

    def gather_shards(self):
        """The fitted shard estimators, brought to this process.

        Returns
        -------
        shards : list of estimators
            Shard ``i`` indexes the fitted rows ``shard_offsets_[i]`` onwards
            (``shard_rows_[i]`` with ``placement='clusters'``), with its own
            row numbers from 0.
        """
        check_is_fitted(self)
        return [self._live(i)[0].result() for i in range(self.n_shards_)]

    # -------------------------------------------------------------- queries
    def _check_search_params(self):
        params = self.search_params_
        if not isinstance(params, list) or len(params) != self.n_shards_:
            raise ValueError(
                f"search_params_ must be a list of {self.n_shards_} dicts (one search effort "
                f"per shard), got {params!r}."
            )
        probe = self.coarse_probe_
        if self._router is not None and not (
                isinstance(probe, numbers.Integral) and 1 <= probe <= self.n_coarse_centres_):
            raise ValueError(
                f"coarse_probe_ must be an integer in [1, n_coarse_centres_="
                f"{self.n_coarse_centres_}], got {probe!r}."
            )
        return params

    def _check_queries(self, X, k):
        """Validated NumPy/sparse queries, or the error for ``k`` too large."""
        check_is_fitted(self)
        n_queries = self.n_samples_fit_ if X is None else None
        if X is not None and not _is_dask_array(X):
            X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32],
                              order="C", reset=False)
            n_queries = X.shape[0]
        if k is not None and k + (X is None) > self.n_samples_fit_:
            inequality = "n_neighbors < n_samples_fit" if X is None else (
                "n_neighbors <= n_samples_fit"
            )
            raise ValueError(
                f"Expected {inequality}, but n_neighbors = {k}, n_samples_fit = "
                f"{self.n_samples_fit_}, n_samples = {n_queries}"
            )
        return X

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        """Find the k nearest neighbours of each query point, over all shards.

        Parameters
        ----------
        X : {array-like, sparse matrix, dask array} of shape (n_queries, n_features), \
default=None
            The query points. If None, the neighbours of every fitted point
            are returned, and a point is not its own neighbour. A dask array
            gives dask arrays (computed lazily, chunk by chunk).
        n_neighbors : int, default=None
            Number of neighbours; the estimator's ``n_neighbors`` if None.
        return_distance : bool, default=True
            Whether to return the distances.

        Returns
        -------
        neigh_dist : ndarray of shape (n_queries, n_neighbors)
            Exact input-space distances to the neighbours, ascending. Only
            present if ``return_distance=True``.
        neigh_ind : ndarray of shape (n_queries, n_neighbors)
            Indices of the neighbours among all fitted rows.
        """
        k = self._check_n_neighbors(n_neighbors)
        X = self._check_queries(X, k)
        params = self._check_search_params()
        self._spread_copies()
        if _is_dask_array(X):
            dist, ind = self._lazy_answers(X, _knn_new, k, params, _merge_knn, (k,), (k,),
                                           (np.float64, np.intp))
        elif X is None:
            dist, ind = self._kneighbors_rows(np.arange(self.n_samples_fit_), k, params)
        else:
            # (validate_data refuses zero queries: there is always a chunk.)
            chunks = (("new", X[s])
                      for s in query_batches(X.shape[0], self._chunk_rows(X.shape[0])))
            dist, ind = stack_parts(list(self._run_all("knn", chunks, k, params)))
        dist = dist.astype(self._dtype)
        return (dist, ind) if return_distance else ind

    def _lazy_chunks(self, X, task, arg, params):
        """Per chunk of the dask array ``X``: its rows, and the delayed answers
        of ``task(shard, chunk, arg, params)`` on every shard (with clusters,
        the shard's part of the chunk rather than the chunk), and for radius
        queries with clusters, ``(rows, answers)`` of the chunk's rows
        searched again on every shard (see :func:`._shard_tasks._cut_off`);
        then the maps of the shards' rows (for the merge)."""
        import dask

        X = _check_dask_array(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has shape {X.shape}, but ShardedNeighbors is expecting "
                f"{self.n_features_in_} features as input."
            )
        X = X.rechunk({1: -1})
        live = [self._live(i) for i in range(self.n_shards_)]
        # The maps to global rows: offsets, or the router, carried by the
        # graph (not scattered: Dask could not recompute it where a worker
        # holding the last replica is lost, and its memory manager drops
        # the replicas a broadcast made).
        maps = self.shard_offsets_[:-1] if self._router is None else dask.delayed(
            self._router, name=f"skknn-router-{_token()}", traverse=False)
        chunks = []
        for turn, (chunk, rows) in enumerate(zip(X.to_delayed().ravel(), X.chunks[0])):
            # One task per shard, where Dask sees the shard is (shards report
            # their size: see SearchBase.__sizeof__), then one to merge;
            # chunks take turns over the replicas. With clusters, one task
            # routes the chunk first, and each shard gets its part of it.
            parts = [chunk] * self.n_shards_
            if self._router is not None:
                parts = dask.delayed(_split, pure=False, nout=self.n_shards_)(
                    maps, chunk, self.coarse_probe_)

            def on_shards(parts, turn=turn):
                return [dask.delayed(task, pure=False)(copies[turn % len(copies)], part, arg, p)
                        for copies, p, part in zip(live, params, parts)]

            answers = on_shards(parts)
            if self._router is not None and task is _radius_new:
                # The queries whose ball may reach beyond the shards they
                # visited (often none), searched again on every shard.
                again = dask.delayed(_cut_off, pure=False)(answers, maps)
                again = (again, on_shards([dask.delayed(_take, pure=False)(chunk, again)]
                                          * self.n_shards_))
                chunks.append((rows, answers, again))
            else:
                chunks.append((rows, answers))
        return chunks, maps

    def _lazy_answers(self, X, task, arg, params, merge, merge_args, shape, dtypes):
        """Dask arrays of the answers, chunk by chunk: ``task`` on every shard
        (see :meth:`_lazy_chunks`), then ``merge(parts, maps, *merge_args)``
        giving two arrays of ``(rows, *shape)`` and ``dtypes``."""
        import dask
        import dask.array as da

        chunks, maps = self._lazy_chunks(X, task, arg, params)
        out = ([], [])
        for rows, parts, *again in chunks:
            answer = dask.delayed(merge, pure=False, nout=2)(parts, maps, *merge_args, *again)
            for part, dtype, arrays in zip(answer, dtypes, out):
                arrays.append(da.from_delayed(part, (rows, *shape), dtype=dtype))
        return tuple(da.concatenate(arrays) for arrays in out)

    def _graph_of(self, build, dist, ind, mode):
        """A lazy answer's graph is a dask array of CSR blocks, one per chunk."""
        if not _is_dask_array(ind):
            return super()._graph_of(build, dist, ind, mode)
        import dask.array as da

        return da.map_blocks(
            build, dist, ind, mode=mode, n_samples_fit=self.n_samples_fit_,
            dtype=self._dtype if mode == "distance" else np.float64,
            chunks=(dist.chunks[0], (self.n_samples_fit_,)),
            new_axis=1 if dist.ndim == 1 else None, meta=csr_matrix((0, 0)),
        )

    def radius_neighbors(self, X=None, radius=None, return_distance=True, sort_results=False):
        """Find the neighbours within ``radius`` of each query point, over all shards.

        Each shard searches as its estimator does (exact in its exact setting).
        With ``placement='clusters'``, a query whose visited shards' rows all
        lie within the radius is searched again on every shard; other balls
        are cut off at the shards visited.

        Parameters
        ----------
        X : {array-like, sparse matrix, dask array} of shape (n_queries, n_features), \
default=None
            The query points; the fitted points (each not its own neighbour)
            if None. A dask array gives dask arrays (computed lazily, chunk
            by chunk).
        radius : float, default=None
            Limiting distance (inclusive); the estimator's ``radius`` if None.
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
            Indices of the neighbours among all fitted rows.
        """
        radius = self._check_radius(radius, return_distance, sort_results)
        X = self._check_queries(X, None)
        params = self._check_search_params()
        self._spread_copies()
        if _is_dask_array(X):
            dists, inds = self._lazy_answers(X, _radius_new, radius, params, _radius_chunk,
                                             (sort_results, self._dtype), (), (object, object))
            return (dists, inds) if return_distance else inds
        back = None
        if X is None:
            queries, back = self._own_chunks()
        else:
            queries = [("new", X[s])
                       for s in query_batches(X.shape[0], self._chunk_rows(X.shape[0]))]
        dists, inds = [], []
        for d, i in self._run_all("radius", queries, radius, params):
            dists.extend(d)
            inds.extend(i)
        if back is not None:  # shard by shard, back to the rows' order
            dists, inds = [dists[j] for j in back], [inds[j] for j in back]
        dists, inds = _finish_radius(dists, inds, sort_results, self._dtype)
        return (dists, inds) if return_distance else inds



def _check_dask_array(X):
    """A 2D dask array of float32 or float64, with at least one row (where
    its number of rows is known) and one feature; other real dtypes are cast
    to float64, as ``check_array`` casts NumPy arrays. (Its values are
    checked by the tasks that read them.)"""
    if X.ndim != 2:
        raise ValueError(f"Expected a 2D dask array, got shape {X.shape}.")
    for size, what in zip(X.shape, ("sample(s)", "feature(s)")):
        if size == 0:
            raise ValueError(
                f"Found array with 0 {what} (shape={X.shape}) while a minimum of 1 is "
                "required by ShardedNeighbors."
            )
    if np.issubdtype(X.dtype, np.complexfloating):
        # Cast to float64, the imaginary parts would be dropped on the workers.
        raise ValueError(f"Complex data not supported: the dask array has dtype {X.dtype}.")
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    return X


def _is_dask_array(X):
    module = type(X).__module__
    return module.startswith("dask.") and hasattr(X, "to_delayed")

