"""setup_dask_workers: preparing a Dask cluster's workers for skknn tasks.

Dask (``distributed``) is imported only when a function here is called; the
plugin itself lives in :mod:`._dask_workers`, which needs it.
"""

from ._indexes import import_optional


def _distributed():
    return import_optional("distributed", "dask", "ShardedNeighbors")


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
