"""How a fitted ShardedNeighbors reaches its shards on the Dask workers.

Each shard may have copies on several workers (``replicas``); tasks run on
the worker holding the copy they search. A chunk of queries becomes one task
per shard it visits (:mod:`._shard_tasks`; with ``placement='clusters'``
the chunk is routed once, and each shard gets only its own queries), and the
shards' answers are merged. Where a
worker is lost during a chunk, the chunk runs again on the copies left; a
shard with no copy left raises :class:`ShardLostError`, never a partial
answer. The rows each shard holds map its answers to rows of the whole data.
"""

import time
from collections import deque
from concurrent.futures import CancelledError
from operator import getitem

import numpy as np

from ._base import query_batches
from ._dask_setup import _distributed
from ._kernels import blas_controller
from ._search import stack_parts
from ._shard_tasks import (
    ShardLostError,
    _copy_of_shard,
    _cut_off,
    _fitted_rows,
    _knn_new,
    _knn_own,
    _merge_knn,
    _merge_radius,
    _radius_new,
    _radius_own,
    _reference,
    _split,
    _spread,
    lost_message,
)

# Bytes of float64 query rows sent to the shards as one chunk (one task per
# shard and chunk): large enough that a task's overhead (~1 ms) is small
# against its search, small enough to bound each worker's memory.
_CHUNK_BYTES = 2**25

# Seconds to wait for the news of a copy's loss (see ShardFanOut._holders).
_LOSS_NEWS = 10.0


def _new_task(kind):
    """The task searching new query rows, for ``kind`` 'knn' or 'radius'."""
    return _knn_new if kind == "knn" else _radius_new


def _own_task(kind):
    """The task searching a shard's own fitted rows, each not its own neighbour."""
    return _knn_own if kind == "knn" else _radius_own


def submit_copy(client, prefix, lost, fitted, lineage, worker):
    """A copy of a shard on ``worker``, under a new key starting with
    ``prefix``: see :func:`._shard_tasks._copy_of_shard`."""
    return client.submit(_copy_of_shard, prefix, lost, fitted, lineage,
                         key=f"{prefix}{_token()}", workers=[worker],
                         allow_other_workers=True, pure=False)


def unpin(client, copies):
    """Let Dask recover placed copies on any worker.

    Dask never gives a task waiting for a worker, whose workers are all
    gone, to workers that join later, even with ``allow_other_workers``:
    after every worker was lost at once, recoveries of copies that kept
    their worker restriction (and the queries waiting for them) hung.
    """
    client.sync(client.scheduler.set_restrictions,
                worker=dict.fromkeys(copy.key for copy in copies))


def _token():
    import uuid

    return uuid.uuid4().hex[:12]


class ShardFanOut:
    """The fan-out of :class:`~skknn.ShardedNeighbors`: its shards' copies,
    chunks of queries run on every shard and merged, and the rows each shard
    holds (mixed into the estimator; the fitted state is set by its ``fit``).
    """

    # ------------------------------------------------------- fan-out, merge
    def _live(self, shard):
        """The copies of a shard to search: those in memory, else those Dask
        is recovering (tasks on them wait for them)."""
        copies = self._shards[shard]
        for states in (("finished",), ("pending", "lost")):
            live = [f for f in copies if f.status in states]
            if live:
                return live
        raise ShardLostError(self._lost_message(shard))

    def _lost_message(self, shard):
        """What :class:`ShardLostError` says of shard ``shard``."""
        return lost_message(shard, self._global_rows(shard), self._router is None)

    def _spread_copies(self):
        """Spread again copies of one shard that came to share a worker.

        Dask recovers a lost copy on a worker of its choosing, perhaps one
        holding another copy of the shard (one object then), and a second
        loss would take both. A copy may also be held on several workers (a
        lazy query's task that ran away with it): Dask's memory manager
        later keeps one of its replicas, perhaps the one beside another
        copy. Before a query, once the recoveries under way have ended, each
        copy is given a worker of its own where it can be: such a copy is
        made again, under a new key, on a worker that holds it already and
        no other copy (the same object, nothing sent), else on a worker
        holding none of the shard. The first copy of a shard fitted from a
        dask array stays as it is (it is the fit, which Dask can recompute).
        One scheduler call when all are apart.
        """
        if self.replicas == 1:
            return
        distributed, client = _distributed(), self._client
        every = [copy for copies in self._shards for copy in copies]
        where, moved = self._holders(every), []
        workers = set(client.nthreads())
        for i, copies in enumerate(self._shards):
            held = [set(where.get(copy.key, ())) for copy in copies]
            free, claimed = sorted(workers.difference(*held)), set()
            for r, holders in enumerate(held):
                others = set().union(*held[:r], *held[r + 1:])
                if (len(holders) == 1 and not holders & claimed) or not holders or (
                        r == 0 and self._from_dask):
                    claimed |= holders  # apart already, being recovered, or the fit
                    continue
                homes = sorted(holders - claimed - others) + sorted(holders - claimed) + free
                if not homes:
                    claimed |= holders
                    continue
                home = homes[0]
                if home in free:
                    free.remove(home)
                lineage = copies[0].key if self._from_dask else None
                copies[r] = submit_copy(client, self._copy_prefixes[i], self._lost_message(i),
                                        lineage, lineage, home)
                moved.append(copies[r])
                claimed.add(home)
        if moved:
            distributed.wait(moved)
            unpin(client, moved)

    def _holders(self, copies):
        """Which workers hold each of ``copies``, once the recoveries under
        way have ended.

        The scheduler tells this client of a lost copy in a message of its
        own, which may come after its answer to ``who_has``: a copy read as
        in memory ('finished') that no worker holds is one of these, and is
        looked at again (every 50 ms, for at most ``_LOSS_NEWS`` seconds).
        """
        distributed, client = _distributed(), self._client
        deadline = time.monotonic() + _LOSS_NEWS
        while True:
            distributed.wait([copy for copy in copies if copy.status in ("pending", "lost")])
            where = client.who_has(copies)
            unheld = [copy for copy in copies
                      if copy.status == "finished" and not where.get(copy.key)]
            if not unheld or time.monotonic() > deadline:
                return where
            time.sleep(0.05)

    def _on_shard(self, func, shard, *args, who_has=None):
        """Submit ``func(shard, *args)`` to the worker holding that copy of the shard.

        Left to itself, Dask may run a task elsewhere and copy the shard
        there; its memory manager then keeps one of the two copies, perhaps
        on a worker that holds a replica already. The task only prefers the
        holder: where it is lost, Dask recovers the copy on another worker
        (:func:`._shard_tasks._copy_of_shard`) and runs the task there.
        """
        who_has = self._client.who_has(shard) if who_has is None else who_has
        holders = list(who_has.get(shard.key, ()))
        if not holders:  # being recovered
            return self._client.submit(func, shard, *args, pure=False)
        return self._client.submit(func, shard, *args, pure=False, workers=holders,
                                   allow_other_workers=True)

    def _submit(self, kind, query, k, params, every=False):
        """Tasks of one chunk of queries on the shards, in shard order: for
        each shard, its future (None if no query of the chunk visits it) and
        the chunk's queries it answers (None: all of them).

        ``query`` is ``('new', rows)`` or ``('own', shard, ids)`` (fitted rows
        of one shard, each not its own neighbour). ``kind``: 'knn',
        'reference' or 'radius' (``k`` is then the radius). ``every``: each
        query on every shard, even where clusters are placed.
        """
        client = self._client
        routed = self._router is not None and kind != "reference" and not every
        # Chunks take turns over the replicas of each shard: replicas share
        # the queries as well as guarding against a lost worker.
        turn = next(self._turns)
        shards = [live[turn % len(live)] for live in map(self._live, range(self.n_shards_))]
        where = client.who_has(shards)
        if query[0] == "new" and routed:
            # Routed here, once: each shard gets only the queries visiting it.
            # (One BLAS thread: with two, idle BLAS threads spinning here
            # more than doubled this process's CPU, taken from workers on
            # the same machine.)
            with blas_controller().limit(limits=1, user_api="blas"):
                parts = _split(self._router, query[1], self.coarse_probe_)
            return [(self._on_shard(_new_task(kind), shard, self._scatter(part, where, shard),
                                    k, params[i], who_has=where) if len(rows) else None, rows)
                    for i, (shard, (rows, part, _)) in enumerate(zip(shards, parts))]
        if query[0] == "new":
            # Sent where the first shard's copy is (a single shard: no copy further).
            data, owner = self._scatter(query[1], where, shards[0]), None
        else:
            owner, ids = query[1], query[2]
            data = self._on_shard(_fitted_rows, shards[owner], ids, who_has=where)
            if routed:
                # Routed once, where the rows are; each other shard fetches
                # its part. (A fitted row's own shard is always among its visits.)
                there = {"pure": False, "allow_other_workers": True,
                         "workers": list(where.get(shards[owner].key, ())) or None}
                split = client.submit(_split, self._shared_router(), data, self.coarse_probe_,
                                      **there)
        tasks = []
        for i, shard in enumerate(shards):
            if kind == "reference":
                task, args = _reference, (data, k)
            elif i == owner:
                task, args = _own_task(kind), (ids, k, params[i])
            else:
                part = client.submit(getitem, split, i, **there) if routed else data
                task, args = _new_task(kind), (part, k, params[i])
            tasks.append((self._on_shard(task, shard, *args, who_has=where), None))
        return tasks

    def _scatter(self, rows, where, shard):
        """Query rows sent to the worker(s) holding ``shard`` (a copy)."""
        holders = list(where.get(shard.key, ()))
        try:
            return self._client.scatter(rows, workers=holders or None, hash=False)
        except KeyError:  # that worker has just left (a lost copy: retried)
            return self._client.scatter(rows, hash=False)

    def _lost(self):
        """The errors by which a task or a transfer reports a lost worker."""
        distributed = _distributed()
        # OSError: the connection to a worker closed while sending to it.
        return CancelledError, distributed.client.FutureCancelledError, OSError

    def _run(self, kind, query, k, params=None, tasks=None, every=False):
        """One chunk of queries on every shard, merged (see :meth:`_submit`).

        ``tasks``: its tasks, if already submitted. Where a worker is lost
        during the chunk, the chunk is run again on the replicas left; never
        is a partial answer returned. A routed radius query whose ball may
        reach beyond the shards it visited is searched again on every shard
        (:func:`._shard_tasks._cut_off`).
        """
        n_queries = query[1].shape[0] if query[0] == "new" else len(query[2])
        for _ in range(sum(len(r) for r in self._shards) + 1):
            try:
                if tasks is None:
                    tasks = self._submit(kind, query, k, params, every)
                found = iter(self._client.gather([f for f, _ in tasks if f is not None]))
                parts = [_spread(kind, None if f is None else next(found), rows, n_queries, k)
                         for f, rows in tasks]
            except self._lost():
                tasks = None  # again, on the replicas left
                continue
            maps = self._maps_of_shards()
            if kind != "radius":
                return _merge_knn(parts, maps, k)
            dists, inds = _merge_radius(parts, maps)
            if self._router is None or every:
                return dists, inds
            own = None if query[0] == "new" else query[1]
            redo = _cut_off(parts, maps, own)
            if len(redo):
                again = (("new", query[1][redo]) if own is None
                         else ("own", own, query[2][redo]))
                for row, d_row, i_row in zip(redo, *self._run(kind, again, k, params,
                                                              every=True)):
                    dists[row], inds[row] = d_row, i_row
            return dists, inds
        raise ShardLostError("Workers were lost on every attempt to search this chunk.")

    def _run_all(self, kind, queries, k, params):
        """:meth:`_run` over chunks, in order. As many chunks as a shard has
        copies are searched at once, and the next one is submitted before
        the first of them is merged (the workers search meanwhile)."""
        pending, depth = deque(), self._copies() + 1
        for query in queries:
            try:
                tasks = self._submit(kind, query, k, params)
            except self._lost():
                tasks = None
            pending.append((query, tasks))
            if len(pending) >= depth:
                query, tasks = pending.popleft()
                yield self._run(kind, query, k, params, tasks)
        while pending:
            query, tasks = pending.popleft()
            yield self._run(kind, query, k, params, tasks)

    def _copies(self):
        """The fewest live copies of any shard."""
        return min(len(self._live(i)) for i in range(self.n_shards_))

    def _chunk_rows(self, n_queries):
        """Rows per chunk of ``n_queries``: at most ``_CHUNK_BYTES`` of float64,
        and at least one chunk per copy of a shard, so that all copies search."""
        by_bytes = max(1, _CHUNK_BYTES // (8 * self.n_features_in_))
        return max(1, min(by_bytes, -(-n_queries // self._copies())))

    # ------------------------------------------------ rows and their shards
    def _maps_of_shards(self):
        """What maps each shard's rows to global rows (see :func:`_to_global`)."""
        return self.shard_offsets_[:-1] if self._router is None else self._router.shard_rows

    def _global_rows(self, shard):
        """The fitted rows (global, ascending) shard ``shard`` holds."""
        if self._router is None:
            return np.arange(self.shard_offsets_[shard], self.shard_offsets_[shard + 1])
        return self._router.shard_rows[shard]

    def _locate(self, rows):
        """The shard of each of the fitted rows ``rows`` (global), and its row there."""
        if self._router is None:
            shard = np.searchsorted(self.shard_offsets_, rows, side="right") - 1
            return shard, rows - self.shard_offsets_[shard]
        return self._row_shard[rows], self._row_local[rows]

    def _shared_router(self):
        """The router on the workers (sent again if the workers holding it were lost)."""
        if self._router_future is None or self._router_future.status != "finished":
            self._router_future = self._client.scatter(self._router, broadcast=True,
                                                       hash=False)
        return self._router_future

    def _fitted_rows(self, rows):
        """The fitted rows ``rows`` (global, sorted), fetched from their shards."""
        shard_of, local = self._locate(rows)
        present = np.unique(shard_of)
        futures = [self._on_shard(_fitted_rows, self._live(i)[0], local[shard_of == i])
                   for i in present]
        stacked = np.vstack(self._client.gather(futures))
        if self._router is None:  # contiguous shards: already in order
            return stacked
        return stacked[np.argsort(np.concatenate([np.flatnonzero(shard_of == i)
                                                  for i in present]), kind="stable")]

    def _own_chunks(self, rows=None):
        """``('own', shard, ids)`` chunks of the fitted rows ``rows`` (global,
        sorted; all if None), shard by shard; and where each row of the
        chunks' answers goes among ``rows`` (None: in order)."""
        chunks, order = [], []
        for i in range(self.n_shards_):
            mine = self._global_rows(i)
            if rows is not None:
                mine = mine[np.isin(mine, rows, assume_unique=True)]
            local = self._locate(mine)[1]
            chunks.extend(("own", i, local[s])
                          for s in query_batches(len(mine), self._chunk_rows(len(mine))))
            order.append(mine)
        if self._router is None:  # contiguous shards: already in order
            return chunks, None
        return chunks, np.argsort(np.concatenate(order), kind="stable")

    def _kneighbors_rows(self, rows, k, params):
        """Neighbours of fitted rows (global, sorted), each not its own."""
        chunks, order = self._own_chunks(rows)
        dist, ind = stack_parts(list(self._run_all("knn", chunks, k, params)))
        return (dist, ind) if order is None else (dist[order], ind[order])
