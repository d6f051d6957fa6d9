"""Preparing Dask workers for skknn tasks: thread limits, malloc, a one-time warm-up.

Imported only by :func:`skknn.setup_dask_workers` (it needs ``distributed``).
"""

import ctypes
import importlib.util
import os
import time
import warnings

from distributed.diagnostics.plugin import WorkerPlugin

_XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
_WARM_UPS = ("keras", "kernels", "pynndescent")
# Seconds each part took in this process, once.
_DONE = {}
# glibc's mallopt parameters, and the values set on workers: about where
# glibc's own adaptive thresholds end up (mmap threshold up to 32 MiB, trim
# threshold twice it).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_THRESHOLDS = {_M_MMAP_THRESHOLD: 32 * 2**20, _M_TRIM_THRESHOLD: 64 * 2**20}


def _limit_threads():
    """One thread per task for numba and BLAS (and XLA's flags), in this process.

    Dask runs one task per worker thread; a task that used every core of the
    machine would compete with the worker's other tasks. The nanny sets the
    BLAS and OpenMP variables to 1 before the worker starts (skknn's compiled
    search reads ``OMP_NUM_THREADS`` when imported); XLA and numba read theirs
    when first used.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_XLA_ONE_THREAD}".strip()
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    from . import _search

    # A worker started without a nanny: the search read the variable at import.
    _search._OMP_NUM_THREADS = _search._OMP_NUM_THREADS or "1"


def _limit_jax_threads(n_threads):
    """Start JAX's CPU client in this process with a pool of ``n_threads`` threads.

    jaxlib 0.10's CPU client ignores the ``XLA_FLAGS`` thread settings and
    sizes its thread pool by the CPUs the process may run on when the client
    starts: a worker running one task at a time would train a router on
    every core (measured: 23 s of CPU in 15 s of router training). The
    client is started here while this thread may run on ``n_threads`` CPUs
    only; then every thread started meanwhile gets all of them back. Returns
    the pool's threads, or None where this was not done: JAX not the Keras
    backend or not installed, its client already started, no
    ``sched_setaffinity`` (not Linux), or no fewer CPUs to give it.
    """
    if os.environ.get("KERAS_BACKEND", "jax") != "jax" or not hasattr(os, "sched_setaffinity"):
        return None
    if importlib.util.find_spec("jax") is None:
        return None
    try:  # a private module: a JAX without it is left as it is
        from jax._src.xla_bridge import backends_are_initialized
    except ImportError:
        return None
    cpus = os.sched_getaffinity(0)
    if backends_are_initialized() or n_threads >= len(cpus):
        return None
    narrow = set(sorted(cpus)[:n_threads])
    os.sched_setaffinity(0, narrow)
    try:
        import jax

        jax.devices("cpu")  # starts the client and its pool
    finally:
        # Threads inherit their creator's CPUs: give back all of them to
        # those started here (and to this one).
        for task in os.listdir("/proc/self/task"):
            try:
                if os.sched_getaffinity(int(task)) == narrow:
                    os.sched_setaffinity(int(task), cpus)
            except OSError:  # the thread has ended
                pass
    return n_threads


def _keep_freed_memory():
    """Let glibc keep freed memory for reuse in this process (Linux/glibc only).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, so
    that they return freed memory to the OS at once. glibc then also stops
    adapting its thresholds, and every large temporary is given back and
    faulted in again: a router fit (Keras/JAX) on 100k x 128 rows took 25 s
    in a worker against 16.5 s outside (the whole shard fit 39 against 31 s).
    The thresholds are set here to about glibc's own adaptive values; a
    worker then keeps up to 64 MiB of freed memory for reuse. Returns
    whether glibc accepted them.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return all(mallopt(param, value) == 1 for param, value in _MALLOC_THRESHOLDS.items())


def warm_up(parts):
    """Pay the start-up of ``parts`` in this process, once; the seconds each took."""
    import numpy as np

    rng = np.random.RandomState(0)
    X = rng.rand(300, 8).astype(np.float32)
    for part in parts:
        if part in _DONE:
            continue
        start = time.perf_counter()
        if part == "keras":
            from ._cluster_filtered import ClusterFilteredKNN

            # Imports keras and its backend, initialises the device, and
            # traces a training step like a router's.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # two epochs do not converge
                ClusterFilteredKNN(n_clusters=4, partition="kmeans", epochs=2,
                                   random_state=0).fit(X)
        elif part == "kernels":
            from ._kernels import load

            load()
        elif part == "pynndescent":
            from ._learned import LearnedNeighbors

            LearnedNeighbors(embedder="passthrough", backend="pynndescent",
                             random_state=0).fit(X).kneighbors(X[:10])
        _DONE[part] = time.perf_counter() - start
    return {part: _DONE[part] for part in parts}


class SkknnWorkerSetup(WorkerPlugin):
    """Thread limits, malloc thresholds, then a one-time warm-up, when a worker starts.

    Registered by :func:`skknn.setup_dask_workers`; a worker that (re)starts
    later runs it too.
    """

    name = "skknn-setup"

    def __init__(self, warm_up=("keras", "kernels")):
        self.warm_up = tuple(warm_up)

    def setup(self, worker):
        _limit_threads()
        worker.skknn_jax_threads = _limit_jax_threads(worker.state.nthreads)
        worker.skknn_keeps_freed_memory = _keep_freed_memory()
        worker.skknn_warm_up = warm_up(self.warm_up)
