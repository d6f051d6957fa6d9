import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "quick", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

# Every Keras model compiles its own training step, the same program for
# the same layers and shapes: JAX's persistent compilation cache serves the
# repeats (a tiny fit: 1.7 s -> 0.4 s). Set before JAX is imported; a
# directory of this run's, shared with the test's subprocesses and Dask
# workers. A cache the user configured is left as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _jax_cache = tempfile.mkdtemp(prefix="skknn-tests-jax-")
    atexit.register(shutil.rmtree, _jax_cache, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_jax_cache,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")

# Small networks and few epochs: the tests check behaviour, not quality.
FAST_AE = {"hidden_layer_sizes": (16,), "n_components": 4, "epochs": 3, "batch_size": 64}


@pytest.fixture
def rng():
    return np.random.RandomState(0)


def make_blobs_data(n_samples=600, n_features=12, centers=8, seed=0):
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(
        n_samples=n_samples, n_features=n_features, centers=centers, cluster_std=1.0,
        random_state=seed,
    )
    return X
