"""How many threads the search uses for an estimator's n_jobs."""

import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from joblib import cpu_count, parallel_config

from skknn import _search
from skknn._search import search_threads


def test_none_uses_every_core_like_blas(monkeypatch):
    monkeypatch.setattr(_search, "_OMP_NUM_THREADS", None)
    assert search_threads(None) == cpu_count()
    assert search_threads(1) == 1
    assert search_threads(-1) == cpu_count()


def test_none_respects_omp_num_threads_and_joblib_config(monkeypatch):
    # OMP_NUM_THREADS as the process started (joblib's and Dask's workers).
    monkeypatch.setattr(_search, "_OMP_NUM_THREADS", "1")
    assert search_threads(None) == 1
    assert search_threads(3) == 3  # an explicit n_jobs wins
    monkeypatch.setattr(_search, "_OMP_NUM_THREADS", "not a number")
    assert search_threads(None) == cpu_count()
    monkeypatch.setattr(_search, "_OMP_NUM_THREADS", None)
    with parallel_config(n_jobs=3):
        assert search_threads(None) == 3


def test_omp_num_threads_is_read_as_the_process_started(monkeypatch):
    # Set later (as a Dask LocalCluster's nanny does in the process that
    # creates it), it does not cut the search of this process to one thread.
    monkeypatch.setattr(_search, "_OMP_NUM_THREADS", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert search_threads(None) == cpu_count()


@pytest.mark.parametrize("backend", ["ivf", "pynndescent", "hnswlib", "usearch", "annoy"])
def test_threads_give_the_answers_of_one_thread(backend):
    # Slices of queries searched side by side (embedding, candidate search,
    # re-rank) return what one thread returns, for kneighbors and
    # radius_neighbors, with every backend sharing its index between threads.
    if backend != "ivf":
        pytest.importorskip(backend)
    import numpy as np
    from numpy.testing import assert_array_equal
    from sklearn.decomposition import PCA

    from skknn import LearnedNeighbors

    from .conftest import make_blobs_data

    X = make_blobs_data(n_samples=6000, n_features=12, centers=20)
    Q, X = X[:700], X[700:]
    one = LearnedNeighbors(5, embedder=PCA(6), backend=backend, n_jobs=1, random_state=0).fit(X)
    # The same index searched with two threads: n_jobs is read at query time.
    two = pickle.loads(pickle.dumps(one)).set_params(n_jobs=2)
    assert two._n_jobs == 2
    for a, b in zip(one.kneighbors(Q), two.kneighbors(Q)):
        assert_array_equal(a, b)
    radius = np.median(one.kneighbors(Q)[0][:, -1])
    found = [est.radius_neighbors(Q, radius, sort_results=True)[1] for est in (one, two)]
    for a, b in zip(*found):
        assert_array_equal(a, b)
    # The index itself, called from two threads at once on halves of the
    # codes, answers as the same two calls one after the other: pynndescent
    # kept scratch space (its result heaps) on the index, and two threads
    # wrote into each other's. (Not as one call: pynndescent's random
    # starting points for a query depend on the queries before it in a call.)
    Z = np.tile(one._embed(one._space.unit_raw(one._space.rows(Q)), queries=True)[0], (4, 1))
    halves = [Z[:1400], Z[1400:]]  # long enough calls to overlap
    alone = [one._index.query(z, 50, 1) for z in halves]
    start = threading.Barrier(2)

    def at_once(z):
        start.wait()
        return one._index.query(z, 50, 1)

    with ThreadPoolExecutor(2) as pool:
        for _ in range(10):
            for a, b in zip(pool.map(at_once, halves), alone):
                assert_array_equal(a, b, err_msg=f"{backend} in two threads")
