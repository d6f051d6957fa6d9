"""How many threads the search uses for an estimator's n_jobs."""

from joblib import cpu_count, parallel_config

from skknn._search import search_threads


def test_none_uses_every_core_like_blas(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert search_threads(None) == cpu_count()
    assert search_threads(1) == 1
    assert search_threads(-1) == cpu_count()


def test_none_respects_omp_num_threads_and_joblib_config(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert search_threads(None) == 1
    assert search_threads(3) == 3  # an explicit n_jobs wins
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert search_threads(None) == cpu_count()
    monkeypatch.delenv("OMP_NUM_THREADS")
    with parallel_config(n_jobs=3):
        assert search_threads(None) == 3
