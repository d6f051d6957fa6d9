"""The tasks :class:`~skknn.ShardedNeighbors` runs on Dask workers, and the merge of their answers.

Each task takes a fitted shard (a search estimator) and answers with exact
float64 distances and the shard's own row numbers; the merge maps them to
rows of the whole data and keeps the ``k`` nearest. Only the copy of a
shard (:func:`_copy_of_shard`) imports Dask, where it runs, on a worker.
"""

import numpy as np

from ._base import _to_object_array
from ._search import _sorted_topk, cut_off, drop_self, reference_kneighbors


class ShardLostError(RuntimeError):
    """A shard was lost with the worker(s) holding it and cannot be recovered."""


def lost_message(shard, rows, contiguous):
    """What :class:`ShardLostError` says of shard ``shard``, holding ``rows``
    (global, ascending; a slice or an array)."""
    rows = np.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows
    held = f"fitted rows {rows[0]} to {rows[-1]}" if contiguous else f"{len(rows)} fitted rows"
    return (
        f"Shard {shard} ({held}) was lost with the worker(s) that held it and cannot be "
        "recovered: its rows were sent from this process, and no copy of it is left. Fit "
        "again, with replicas=2 or more to survive the loss of a worker."
    )


def _fit_shard(estimator, X, y=None):
    return estimator.fit(X) if y is None else estimator.fit(X, y)


def _copy_of_shard(prefix, lost, fitted=None, lineage=None):
    """A copy of a fitted shard: the value of the key ``fitted`` (the fitted
    shard) or of another copy (a key starting with ``prefix``), this
    worker's own object where it holds one.

    A task without dependencies, so that Dask can run it again where the
    copy was lost with its worker (a lazy query's tasks then wait for it):
    it copies a copy that survived, whatever its key (copies may be made
    again under new keys, see ``ShardFanOut._spread_copies``). Where none
    did, it waits for the key ``lineage`` (a shard fitted from a dask array,
    which Dask fits again from the array's chunks), or raises
    :class:`ShardLostError` with the message ``lost``. Copies are only
    looked up, never waited for: a copy being recovered from this one (both
    lost) finds it missing too.
    """
    from distributed import Future, get_client, get_worker, worker_client
    from distributed.utils_comm import gather_from_workers

    worker = get_worker()
    mine = worker.get_current_task()

    def source(key):
        return key == fitted or (isinstance(key, str) and key.startswith(prefix) and key != mine)

    for key in [key for key in worker.data.keys() if source(key)]:
        return worker.data[key]
    client = get_client()
    who_has = client.sync(client.scheduler.who_has)
    for key in [key for key, holders in who_has.items() if holders and source(key)]:
        found = client.sync(gather_from_workers, {key: who_has[key]}, rpc=client.rpc)[0]
        if key in found:
            return found[key]
    if lineage is None:
        raise ShardLostError(lost)
    with worker_client() as client:  # leaves this worker's thread to the refit
        return Future(lineage, client).result()


def _summary(shard):
    return {
        "eval_rows": shard._eval_rows,
        "efforts": list(shard._search_efforts()),
        "default": shard._default_search_params(),
        "out_dtype": shard._space.out_dtype,
        "metric": (shard.effective_metric_, shard.effective_metric_params_),
    }


def _padded(dist, ind, k):
    """Pad a shard's answer to ``k`` columns (a shard may hold fewer rows)."""
    missing = k - dist.shape[1]
    if missing <= 0:
        return dist, ind
    none_d, none_i = _empty(len(dist), missing)
    return np.hstack([dist, none_d]), np.hstack([ind, none_i.astype(ind.dtype, copy=False)])


def _empty(n, k):
    return np.full((n, k), np.inf), np.full((n, k), -1, dtype=np.intp)


def _fitted_rows(shard, ids):
    return shard._space.fitted_rows(ids).data


def _split(router, X, n_probe):
    """A chunk of query rows ``X``, routed once (see :mod:`._placement`): for
    each shard, ``(rows, X[rows], n)``: the ``rows`` visiting it, among the
    chunk's ``n``."""
    visits = router.visits(X, n_probe)
    picked = [np.flatnonzero(visits[:, shard]) for shard in range(router.n_shards)]
    return [(rows, X[rows], X.shape[0]) for rows in picked]


def _unpack(X):
    """Query rows ``X``: an array (a whole chunk), or a shard's part of a
    chunk from :func:`_split`; as ``(rows, array, n)``, ``rows`` None for all."""
    return X if isinstance(X, tuple) else (None, X, X.shape[0])


def _knn_new(shard, X, k, params):
    """Top ``k`` of query rows ``X`` in this shard: float64 distances, shard rows.

    ``X`` may be this shard's part of a chunk (:func:`_split`): the answer is
    for the whole chunk, and its other rows get no neighbours (infinite
    distances, row -1).
    """
    k_shard = min(k, shard.n_samples_fit_)
    return _answer_part(shard, X, "knn", k, lambda n, rows_of: _padded(
        *shard._search(rows_of, n, k_shard, params), k))


def _answer_part(shard, X, kind, k, search):
    """``search(n, rows_of)`` of the query rows ``X`` in this shard (see
    :func:`_unpack`), spread over the whole chunk (see :func:`_spread`)."""
    rows, X, n = _unpack(X)
    found = search(*shard._queries(X)) if X.shape[0] else None
    return _spread(kind, found, rows, n, k)


def _spread(kind, found, rows, n, k):
    """A shard's answer ``found`` for the rows ``rows`` of a chunk of ``n``
    queries (None: all of them) as its answer for the whole chunk: the
    other queries get no neighbours (radius: None, no row looked at, told
    apart from an empty ball). ``found`` None: none for any."""
    if found is not None and rows is None:
        return found
    if kind == "radius":
        dists, inds = [None] * n, [None] * n
        if found is not None:
            for row, d_row, i_row in zip(rows, *found):
                dists[row], inds[row] = d_row, i_row
        return dists, inds
    dist, ind = _empty(n, k)
    if found is not None:
        dist[rows], ind[rows] = found
    return dist, ind


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
    """Neighbours within ``radius`` of query rows ``X`` (see :func:`_knn_new`)."""
    return _answer_part(shard, X, "radius", None, lambda n, rows_of: _radius_rows(
        shard, rows_of, n, radius, params))


def _radius_own(shard, ids, radius, params):
    return _radius_rows(shard, lambda batch: shard._space.fitted_rows(ids[batch]), len(ids),
                        radius, params, own=ids)


def _to_global(ind, rows):
    """Shard rows ``ind`` (-1: none) as rows of the whole data: ``rows`` is the
    shard's first row (contiguous shards) or its rows."""
    if isinstance(rows, np.ndarray):
        return np.where(ind >= 0, rows[np.maximum(ind, 0)], -1)
    return np.where(ind >= 0, ind + rows, -1)


def _shard_maps(maps):
    """Each shard's rows for :func:`_to_global`: ``maps`` is a router or offsets."""
    return getattr(maps, "shard_rows", maps)


def _merge_knn(parts, maps, k):
    """The ``k`` nearest of the shards' answers, ties by row; global rows."""
    dist = np.hstack([d for d, _ in parts])
    ind = np.hstack([_to_global(i, m) for (_, i), m in zip(parts, _shard_maps(maps))])
    return _sorted_topk(dist, ind, k)


def _merge_radius(parts, maps):
    """The shards' radius answers (None where a query did not visit the
    shard) joined; global rows."""
    dists, inds = [], []
    maps = _shard_maps(maps)
    for rows in zip(*(zip(*part) for part in parts)):
        seen = [(d, _to_global(i, m)) for (d, i), m in zip(rows, maps) if i is not None]
        dists.append(np.concatenate([d for d, _ in seen]) if seen else np.empty(0))
        inds.append(np.concatenate([i for _, i in seen]) if seen else np.empty(0, np.intp))
    return dists, inds


def _cut_off(parts, maps, own=None):
    """The queries of a chunk whose radius answers (the shards' ``parts``)
    may be cut off at the shards they visited (``maps``: a router's), see
    :func:`._search.cut_off`. ``own``: the shard of fitted-row queries
    (each not its own neighbour), else None."""
    sizes = np.array([len(rows) for rows in _shard_maps(maps)])
    looked, found = 0, 0
    for size, (_, inds) in zip(sizes, parts):
        visited = np.array([i is not None for i in inds], dtype=bool)
        looked = looked + size * visited
        found = found + np.array([0 if i is None else len(i) for i in inds], dtype=np.intp)
    mine = 0 if own is None else 1  # its own row is not its neighbour
    return cut_off(found, looked - mine, sizes.sum() - mine)


def _take(X, rows):
    return X[rows]


def _finish_radius(dists, inds, sort_results, dtype):
    """Each query's neighbours in order, by (distance, row) if ``sort_results``,
    else by row, with distances in ``dtype``: object arrays."""
    dists, inds = list(dists), list(inds)
    for row, (d_row, i_row) in enumerate(zip(dists, inds)):
        order = (np.lexsort((i_row, d_row)) if sort_results
                 else np.argsort(i_row, kind="stable"))
        dists[row], inds[row] = d_row[order].astype(dtype), i_row[order]
    return _to_object_array(dists), _to_object_array(inds)


def _radius_chunk(parts, maps, sort_results, dtype, again=None):
    """The shards' radius answers for one chunk of queries, merged and
    finished. ``again``: ``(rows, parts)``, the rows of the chunk searched
    again on every shard (see :func:`_cut_off`) and those answers."""
    dists, inds = _merge_radius(parts, maps)
    if again is not None:
        for row, d_row, i_row in zip(again[0], *_merge_radius(again[1], maps)):
            dists[row], inds[row] = d_row, i_row
    return _finish_radius(dists, inds, sort_results, dtype)
