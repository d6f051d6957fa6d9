"""ShardedNeighbors: one search estimator per shard of the rows, on Dask workers.

The rows are split into contiguous shards. A clone of the estimator is fitted
on each shard by a Dask task, on the worker that holds the shard's rows, and
the fitted shard stays there. A chunk of queries goes to every shard; each
shard answers with exact float64 distances and its own row numbers, and the
top ``k`` are merged with the row numbers mapped to rows of the whole data.

Dask (``distributed``) is imported only here, and only when first needed.
"""

import itertools
import numbers
from collections import deque
from concurrent.futures import CancelledError

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.utils import check_random_state, gen_even_slices
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import (
    _N_RECALL,
    NeighborsGraphMixin,
    SearchBase,
    _to_object_array,
    first_reaching,
    fit_atomically,
    query_batches,
)
from ._indexes import import_optional
from ._search import drop_self, recall_at_k, reference_kneighbors, stack_parts

# Bytes of float64 query rows sent to the shards as one chunk (one task per
# shard and chunk): large enough that a task's overhead (~1 ms) is small
# against its search, small enough to bound each worker's memory.
_CHUNK_BYTES = 2**25


class ShardLostError(RuntimeError):
    """A shard was lost with the worker(s) holding it and cannot be recovered."""


def _distributed():
    return import_optional("distributed", "dask", "ShardedNeighbors")


# ------------------------------------------------------ tasks on the workers
def _fit_shard(estimator, X, y=None):
    return estimator.fit(X) if y is None else estimator.fit(X, y)


def _summary(shard):
    return {
        "eval_rows": shard._eval_rows,
        "efforts": list(shard._search_efforts()),
        "default": shard._default_search_params(),
        "dtype": shard._space.dtype,
        "metric": (shard.effective_metric_, shard.effective_metric_params_),
    }


def _padded(dist, ind, k):
    """Pad a shard's answer to ``k`` columns (a shard may hold fewer rows)."""
    missing = k - dist.shape[1]
    if missing <= 0:
        return dist, ind
    n = len(dist)
    return (np.hstack([dist, np.full((n, missing), np.inf)]),
            np.hstack([ind, np.full((n, missing), -1, dtype=ind.dtype)]))


def _empty(n, k):
    return np.full((n, k), np.inf), np.full((n, k), -1, dtype=np.intp)


def _fitted_rows(shard, ids):
    return shard._space.fitted_rows(ids).data


def _knn_new(shard, X, k, params):
    """Top ``k`` of query rows ``X`` in this shard: float64 distances, shard rows."""
    n, rows_of = shard._queries(X)
    k_shard = min(k, shard.n_samples_fit_)
    return _padded(*shard._search(rows_of, n, k_shard, params), k)


def _knn_own(shard, ids, k, params):
    """Top ``k`` of the shard's fitted rows ``ids``, each not its own neighbour."""
    k_shard = min(k, shard.n_samples_fit_ - 1)
    if k_shard < 1:
        return _empty(len(ids), k)
    found = shard._search(lambda batch: shard._space.fitted_rows(ids[batch]), len(ids),
                          k_shard + 1, params, self_included=True)
    return _padded(*drop_self(*found, ids), k)


def _reference(shard, X, k):
    """Exact float64 top ``k`` by the reference route (for ``recall_``)."""
    space = shard._space
    k_shard = min(k, shard.n_samples_fit_)
    dist, ind = reference_kneighbors(space, space.rows(X), k_shard)
    return _padded(dist, space.to_ids(ind), k)


def _radius_rows(shard, rows_of, n, radius, params, own=None):
    shard._check_search_params(params)
    dists, inds = [], []
    for row, (d_row, i_row) in enumerate(shard._radius_rows(rows_of, n, radius, params)):
        if own is not None:
            keep = i_row != own[row]
            d_row, i_row = d_row[keep], i_row[keep]
        dists.append(d_row)
        inds.append(i_row)
    return dists, inds


def _radius_new(shard, X, radius, params):
    n, rows_of = shard._queries(X)
    return _radius_rows(shard, rows_of, n, radius, params)


def _radius_own(shard, ids, radius, params):
    return _radius_rows(shard, lambda batch: shard._space.fitted_rows(ids[batch]), len(ids),
                        radius, params, own=ids)


def _merge_knn(parts, offsets, k):
    """The ``k`` nearest of the shards' answers, ties by row; global rows."""
    dist = np.hstack([d for d, _ in parts])
    ind = np.hstack([np.where(i >= 0, i + off, -1) for (_, i), off in zip(parts, offsets)])
    # A full sort, not a partition: ties at the k-th distance go to the lower row.
    order = np.lexsort((ind, dist), axis=-1)[:, :k]
    return np.take_along_axis(dist, order, 1), np.take_along_axis(ind, order, 1)


def _merge_radius(parts, offsets):
    dists, inds = [], []
    for rows in zip(*(zip(*part) for part in parts)):
        dists.append(np.concatenate([d for d, _ in rows]))
        inds.append(np.concatenate([i + off for (_, i), off in zip(rows, offsets)]))
    return dists, inds


def setup_dask_workers(client=None, *, warm_up=("keras", "kernels")):
    """Prepare every worker of a Dask cluster for skknn tasks, once per worker.

    Registers a worker plugin (also run by workers that start later) that

    * limits XLA (JAX), numba and BLAS to one thread per task, as Dask runs
      one task per worker thread: a task using every core would compete with
      the worker's other tasks (call this before the workers run JAX);
    * on Linux (glibc), lets a worker keep up to 64 MiB of freed memory for
      reuse: Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``,
      under which every large temporary goes back to the OS and is faulted
      in again (a shard fit of 100k x 128 rows: 39 s, and 31 s after this);
    * pays the start-up of ``warm_up`` now, once per worker process, rather
      than in the first task that needs it (e.g. a grid search's first fit
      on each worker).

    Use it before ``joblib.parallel_backend('dask')`` runs a grid search of
    skknn estimators, or before fitting a :class:`ShardedNeighbors`.

    Parameters
    ----------
    client : distributed.Client, default=None
        The cluster's client; the default client if None.
    warm_up : tuple of {'keras', 'kernels', 'pynndescent'}, default=('keras', 'kernels')
        What to start up: Keras with its backend (a tiny router fit), the
        compiled search kernels, and pynndescent (its compilation takes
        ~30 s per process; include it for ``backend='pynndescent'``).

    Returns
    -------
    took : dict
        For each worker address, the seconds each warm-up took there.
    """
    distributed = _distributed()
    from ._dask_workers import _WARM_UPS, SkknnWorkerSetup

    unknown = set(warm_up) - set(_WARM_UPS)
    if unknown:
        raise ValueError(f"warm_up takes parts among {_WARM_UPS}, got {sorted(unknown)}.")
    if client is None:
        client = distributed.get_client()
    client.register_plugin(SkknnWorkerSetup(warm_up))
    return client.run(lambda dask_worker: dask_worker.skknn_warm_up)


# ------------------------------------------------------------ the estimator
class ShardedNeighbors(NeighborsGraphMixin, BaseEstimator):
    """Nearest neighbours over shards of the data, one search estimator per shard, on Dask.

    The rows are split into ``n_shards`` contiguous shards, and a clone of
    ``estimator`` is fitted on each by a task on a Dask worker; the shard's
    rows and its fitted index stay on that worker. Queries go to every shard
    in chunks; each shard returns its ``k`` nearest with exact distances, and
    the ``k`` nearest of those are returned, with indices of rows of the
    whole fitted data. In the estimator's exact setting
    (``LearnedNeighbors(embedder='passthrough', backend='brute')``,
    ``ClusterFilteredKNN(n_probe=n_clusters)``) the answer equals
    :class:`~sklearn.neighbors.NearestNeighbors` on the whole data.

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
        most the number of workers). Shards fitted from a NumPy array
        are scattered from this process: a shard whose every replica is lost
        with its worker cannot be recomputed, and queries raise
        :class:`ShardLostError`. With ``replicas=2``, NumPy queries survive
        the loss of any one worker (they are retried on the other replica)
        at twice the cluster memory. Replicas also share the queries: chunks
        of queries take turns over the copies of each shard, so that
        ``n_shards=1, replicas=2`` on two workers answers about twice the
        queries per second of one (the whole index on each). Shards fitted
        from a dask array are recomputed from their chunks by Dask.

    Attributes
    ----------
    n_shards_ : int
        Number of shards.
    shard_offsets_ : ndarray of int
        The ``n_shards_ + 1`` boundaries of the shards: shard ``i`` holds
        the fitted rows ``shard_offsets_[i]`` to ``shard_offsets_[i + 1] - 1``.
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
    bounded memory. A fitted ShardedNeighbors holds its shards on the
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
    }

    def __init__(self, estimator, *, n_shards=None, client=None, replicas=1):
        self.estimator = estimator
        self.n_shards = n_shards
        self.client = client
        self.replicas = replicas

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
            X = _check_dask_array(X)
            self.n_features_in_ = X.shape[1]
        else:
            X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32],
                              order="C")
        n_samples = X.shape[0]
        # Asked of the scheduler now: scheduler_info()'s cached copy may be
        # one a periodic refresh made without the workers (distributed 2026.8).
        workers = sorted(client.nthreads())
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
        slices = list(gen_even_slices(n_samples, n_shards))
        offsets = np.array([s.start for s in slices] + [n_samples])
        if from_dask:
            # One chunk of rows per shard, computed on the cluster.
            X = X.rechunk((tuple(np.diff(offsets)), (X.shape[1],)))
            shards_data = client.compute(list(X.to_delayed().ravel()))
        else:
            shards_data = [client.scatter(X[s], workers=[workers[i % len(workers)]],
                                          hash=False) for i, s in enumerate(slices)]
        if y is not None:
            y = np.asarray(y)
            if len(y) != n_samples:
                raise ValueError(f"y has {len(y)} rows but X has {n_samples}.")
        rng = check_random_state(self.estimator.random_state)
        seeds = rng.randint(np.iinfo(np.int32).max, size=n_shards)
        shards = []
        for i, (s, data) in enumerate(zip(slices, shards_data)):
            est = clone(self.estimator).set_params(random_state=int(seeds[i]),
                                                    target_recall=None)
            args = (est, data) if y is None else (est, data, y[s])
            # Shards spread over the workers (where their rows were sent).
            shards.append(client.submit(_fit_shard, *args, pure=False,
                                        key=f"skknn-shard-{i}-{_token()}",
                                        workers=[workers[i % len(workers)]],
                                        allow_other_workers=from_dask))
        try:
            self._wait_for_fits(shards)
        except self._lost() as exc:
            raise ShardLostError(
                "A worker was lost while the shards were fitted; nothing was changed. Fit "
                "again."
            ) from exc
        replicas = [[shard] for shard in shards]
        for i, shard in enumerate(shards if self.replicas > 1 else []):
            # A copy sent from here under a key of its own: copying through a
            # task dependency would leave two copies of the one key, and
            # Dask's memory manager keeps only one, perhaps the replica's.
            fitted = shard.result()
            for r in range(1, self.replicas):
                owner = workers[(i + r) % len(workers)]
                replicas[i].append(client.scatter(fitted, workers=[owner], hash=False))
            del fitted
        del shards_data
        self._client, self._shards = client, replicas
        self._turns = itertools.count()
        self._recomputable = from_dask
        summaries = client.gather([self._on_shard(_summary, shard) for shard in shards])
        self.n_shards_ = n_shards
        self.shard_offsets_ = offsets
        self.n_samples_fit_ = n_samples
        self._dtype = np.dtype(summaries[0]["dtype"])
        self.effective_metric_, self.effective_metric_params_ = summaries[0]["metric"]
        self._tune(summaries, rng)

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
            return
        # Rows held out of the shards' learned parts, as global rows.
        held_out = np.concatenate([s["eval_rows"] + off
                                   for s, off in zip(summaries, self.shard_offsets_)])
        if len(held_out) > _N_RECALL:
            held_out = np.sort(rng.choice(held_out, _N_RECALL, replace=False))
        Q = self._fitted_rows(held_out)
        exact = self._run("reference", ("new", Q), k + 1)
        exact = drop_self(*exact, held_out)[0]
        target = self.estimator.target_recall
        # Effort levels: each shard's i-th effort (its last once it has no more).
        efforts = [s["efforts"] for s in summaries]
        levels = [defaults] if target is None else [
            [e[min(level, len(e) - 1)] for e in efforts]
            for level in range(max(len(e) for e in efforts))]

        def measure(params):
            return recall_at_k(self._kneighbors_rows(held_out, k, params)[0], exact)

        self.search_params_, self.recall_ = first_reaching(
            "ShardedNeighbors", levels, measure, target, k)

    def gather_shards(self):
        """The fitted shard estimators, brought to this process.

        Returns
        -------
        shards : list of estimators
            Shard ``i`` indexes rows ``shard_offsets_[i]`` onwards of the
            fitted data, with its own row numbers from 0.
        """
        check_is_fitted(self)
        return [self._live(i)[0].result() for i in range(self.n_shards_)]

    # ------------------------------------------------------- fan-out, merge
    def _live(self, shard):
        """The replicas of a shard not lost with their workers."""
        live = [f for f in self._shards[shard] if f.status not in ("cancelled", "lost")]
        if not live:
            start, stop = self.shard_offsets_[shard], self.shard_offsets_[shard + 1]
            raise ShardLostError(
                f"Shard {shard} (fitted rows {start} to {stop - 1}) was lost with the "
                "worker(s) that held it and cannot be recovered: its rows were sent from "
                "this process, and no replica is left. Fit again, with replicas=2 or more "
                "to survive the loss of a worker."
            )
        return live

    def _on_shard(self, func, shard, *args, who_has=None):
        """Submit ``func(shard, *args)`` to the worker holding that copy of the shard.

        Left to itself, Dask may run a task elsewhere and copy the shard
        there; its memory manager then keeps one of the two copies, perhaps
        on a worker that holds a replica already. Shards fitted from NumPy
        rows cannot be recomputed, so their tasks are pinned; those fitted
        from a dask array may be recomputed on another worker, so theirs
        only prefer the holder.
        """
        who_has = self._client.who_has(shard) if who_has is None else who_has
        holders = list(who_has.get(shard.key, ()))
        if not holders:  # being recomputed
            return self._client.submit(func, shard, *args, pure=False)
        return self._client.submit(func, shard, *args, pure=False, workers=holders,
                                   allow_other_workers=self._recomputable)

    def _submit(self, kind, query, k, params):
        """Tasks of one chunk of queries on every shard (futures, in shard order).

        ``query`` is ``('new', rows)`` or ``('own', shard, ids)`` (fitted rows
        of one shard, each not its own neighbour). ``kind``: 'knn',
        'reference' or 'radius' (``k`` is then the radius).
        """
        client = self._client
        # Chunks take turns over the replicas of each shard: replicas share
        # the queries as well as guarding against a lost worker.
        turn = next(self._turns)
        shards = [live[turn % len(live)] for live in map(self._live, range(self.n_shards_))]
        where = client.who_has(shards)
        if query[0] == "new":
            # Sent where the first shard's copy is (a single shard: no copy further).
            first, owner = list(where.get(shards[0].key, ())), None
            try:
                data = client.scatter(query[1], workers=first or None, hash=False)
            except KeyError:  # that worker has just left (a lost copy: retried)
                data = client.scatter(query[1], hash=False)
        else:
            owner, ids = query[1], query[2]
            data = self._on_shard(_fitted_rows, shards[owner], ids, who_has=where)
        futures = []
        for i, shard in enumerate(shards):
            if kind == "reference":
                task, args = _reference, (data, k)
            else:
                own = i == owner
                task = {("knn", False): _knn_new, ("knn", True): _knn_own,
                        ("radius", False): _radius_new, ("radius", True): _radius_own}[kind, own]
                args = (ids if own else data, k, params[i])
            futures.append(self._on_shard(task, shard, *args, who_has=where))
        return futures

    def _lost(self):
        """The errors by which a task or a transfer reports a lost worker."""
        distributed = _distributed()
        # OSError: the connection to a worker closed while sending to it.
        return CancelledError, distributed.client.FutureCancelledError, OSError

    def _run(self, kind, query, k, params=None, futures=None):
        """One chunk of queries on every shard, merged (see :meth:`_submit`).

        ``futures``: its tasks, if already submitted. Where a worker is lost
        during the chunk, the chunk is run again on the replicas left; never
        is a partial answer returned.
        """
        for _ in range(sum(len(r) for r in self._shards) + 1):
            try:
                if futures is None:
                    futures = self._submit(kind, query, k, params)
                parts = self._client.gather(futures)
            except self._lost():
                futures = None  # again, on the replicas left
                continue
            offsets = self.shard_offsets_[:-1]
            if kind == "radius":
                return _merge_radius(parts, offsets)
            return _merge_knn(parts, offsets, k)
        raise ShardLostError("Workers were lost on every attempt to search this chunk.")

    def _run_all(self, kind, queries, k, params):
        """:meth:`_run` over chunks, in order. As many chunks as a shard has
        copies are searched at once, and the next one is submitted before
        the first of them is merged (the workers search meanwhile)."""
        pending, depth = deque(), self._copies() + 1
        for query in queries:
            try:
                futures = self._submit(kind, query, k, params)
            except self._lost():
                futures = None
            pending.append((query, futures))
            if len(pending) >= depth:
                query, futures = pending.popleft()
                yield self._run(kind, query, k, params, futures)
        while pending:
            query, futures = pending.popleft()
            yield self._run(kind, query, k, params, futures)

    def _copies(self):
        """The fewest live copies of any shard."""
        return min(len(self._live(i)) for i in range(self.n_shards_))

    def _chunk_rows(self, n_queries):
        """Rows per chunk of ``n_queries``: at most ``_CHUNK_BYTES`` of float64,
        and at least one chunk per copy of a shard, so that all copies search."""
        by_bytes = max(1, _CHUNK_BYTES // (8 * self.n_features_in_))
        return max(1, min(by_bytes, -(-n_queries // self._copies())))

    def _fitted_rows(self, rows):
        """The fitted rows ``rows`` (global, sorted), fetched from their shards."""
        shard_of = np.searchsorted(self.shard_offsets_, rows, side="right") - 1
        futures = [self._on_shard(_fitted_rows, self._live(i)[0],
                                  rows[shard_of == i] - self.shard_offsets_[i])
                   for i in np.unique(shard_of)]
        return np.vstack(self._client.gather(futures))

    def _own_chunks(self, rows=None):
        """``('own', shard, ids)`` chunks of the fitted rows ``rows`` (global,
        sorted; all if None), shard by shard."""
        for i in range(self.n_shards_):
            start, stop = self.shard_offsets_[i], self.shard_offsets_[i + 1]
            mine = np.arange(start, stop) if rows is None else rows[(rows >= start)
                                                                    & (rows < stop)]
            for s in query_batches(len(mine), self._chunk_rows(len(mine))):
                yield ("own", i, mine[s] - start)

    def _kneighbors_rows(self, rows, k, params):
        """Neighbours of fitted rows (global, sorted), each not its own."""
        return stack_parts(list(self._run_all("knn", self._own_chunks(rows), k, params)))

    # -------------------------------------------------------------- queries
    def _check_search_params(self):
        params = self.search_params_
        if not isinstance(params, list) or len(params) != self.n_shards_:
            raise ValueError(
                f"search_params_ must be a list of {self.n_shards_} dicts (one search effort "
                f"per shard), got {params!r}."
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
        if _is_dask_array(X):
            dist, ind = self._lazy_kneighbors(X, k, params)
        elif X is None:
            dist, ind = self._kneighbors_rows(np.arange(self.n_samples_fit_), k, params)
        else:
            # (validate_data refuses zero queries: there is always a chunk.)
            chunks = (("new", X[s])
                      for s in query_batches(X.shape[0], self._chunk_rows(X.shape[0])))
            dist, ind = stack_parts(list(self._run_all("knn", chunks, k, params)))
        dist = dist.astype(self._dtype)
        return (dist, ind) if return_distance else ind

    def _lazy_kneighbors(self, X, k, params):
        """Dask arrays of the answers, one task per chunk of ``X`` and shard."""
        import dask
        import dask.array as da

        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has shape {X.shape}, but ShardedNeighbors is expecting "
                f"{self.n_features_in_} features as input."
            )
        X = X.rechunk({1: -1})
        live = [self._live(i) for i in range(self.n_shards_)]
        offsets = self.shard_offsets_[:-1]
        dists, inds = [], []
        for turn, (chunk, rows) in enumerate(zip(X.to_delayed().ravel(), X.chunks[0])):
            # One task per shard, where Dask sees the shard is (shards report
            # their size: see SearchBase.__sizeof__), then one to merge;
            # chunks take turns over the replicas.
            parts = [dask.delayed(_knn_new, pure=False)(copies[turn % len(copies)], chunk, k, p)
                     for copies, p in zip(live, params)]
            answer = dask.delayed(_merge_knn, pure=False, nout=2)(parts, offsets, k)
            dists.append(da.from_delayed(answer[0], (rows, k), dtype=np.float64))
            inds.append(da.from_delayed(answer[1], (rows, k), dtype=np.intp))
        return da.concatenate(dists), da.concatenate(inds)

    def kneighbors_graph(self, X=None, n_neighbors=None, mode="connectivity"):
        if _is_dask_array(X):
            raise TypeError(
                "kneighbors_graph takes NumPy or sparse queries; for a dask array of queries "
                "use kneighbors, which gives dask arrays."
            )
        return super().kneighbors_graph(X, n_neighbors, mode)

    kneighbors_graph.__doc__ = NeighborsGraphMixin.kneighbors_graph.__doc__

    def radius_neighbors(self, X=None, radius=None, return_distance=True, sort_results=False):
        """Find the neighbours within ``radius`` of each query point, over all shards.

        Each shard searches as its estimator does (exact in its exact setting).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_queries, n_features), default=None
            The query points; the fitted points (each not its own neighbour)
            if None.
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
        if _is_dask_array(X):
            raise TypeError(
                "radius_neighbors takes NumPy or sparse queries: the answer's size is not "
                "known in advance. Compute the dask array in chunks and query each."
            )
        params = self._check_search_params()
        if X is None:
            queries = self._own_chunks()
        else:
            queries = [("new", X[s])
                       for s in query_batches(X.shape[0], self._chunk_rows(X.shape[0]))]
        dists, inds = [], []
        for d, i in self._run_all("radius", queries, radius, params):
            dists.extend(d)
            inds.extend(i)
        for row, (d_row, i_row) in enumerate(zip(dists, inds)):
            order = (np.lexsort((i_row, d_row)) if sort_results
                     else np.argsort(i_row, kind="stable"))
            dists[row], inds[row] = d_row[order].astype(self._dtype), i_row[order]
        inds = _to_object_array(inds)
        return (_to_object_array(dists), inds) if return_distance else inds


def _check_dask_array(X):
    """A 2D float dask array with known chunk sizes."""
    if X.ndim != 2:
        raise ValueError(f"Expected a 2D dask array, got shape {X.shape}.")
    if np.isnan(X.shape[0]):
        X = X.compute_chunk_sizes()
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    return X


def _is_dask_array(X):
    module = type(X).__module__
    return module.startswith("dask.") and hasattr(X, "to_delayed")


def _token():
    import uuid

    return uuid.uuid4().hex[:12]

