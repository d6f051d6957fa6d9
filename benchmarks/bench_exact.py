"""Exact search and query start-up on Fashion-MNIST: speed, peak memory, first call.

Run ``python benchmarks/bench_exact.py`` (needs the Fashion-MNIST files, see
``skknn.datasets.load_fashion_mnist``). Prints, each measured in the same run:

* exact kneighbors (k=10) of the 10k test images against the 60k training
  images: skknn's exact setting vs scikit-learn's brute force, median of 3;
  the same on generated embedding-like float32 vectors of 32 (euclidean)
  and 384 (cosine) features, 100k rows and 5k queries;
* peak RSS of 200k queries (the test set 20 times) against 20k training
  images, k=5, each method in a fresh process;
* the first ``kneighbors`` of 2,000 queries after fitting default
  LearnedNeighbors on 20k images, against repeats of the same call;
* the fit time of ``ClusterFilteredKNN(router='centroid')`` on 20k images.
"""

import argparse
import resource
import subprocess
import sys
import time
import warnings

import numpy as np

from skknn.datasets import load_fashion_mnist

_PEAK = """
import resource, sys, time, numpy as np
from skknn.datasets import load_fashion_mnist
X, _, T, _ = load_fashion_mnist()
X, Q = np.ascontiguousarray(X[:20000]), np.ascontiguousarray(np.tile(T, (20, 1)))
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if sys.argv[1] == "sklearn":
    from sklearn.neighbors import NearestNeighbors
    nn = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(X)
else:
    from skknn import LearnedNeighbors
    nn = LearnedNeighbors(5, embedder="passthrough", backend="brute").fit(X)
tic = time.perf_counter()
nn.kneighbors(Q)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, loaded,
      len(Q) / (time.perf_counter() - tic))
"""


def median_time(func, repeats):
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        func()
        times.append(time.perf_counter() - tic)
    return float(np.median(times)), times


def exact_speed(X, T, repeats, metric="euclidean"):
    from sklearn.neighbors import NearestNeighbors

    from skknn import LearnedNeighbors

    for name, est in (("skknn exact", LearnedNeighbors(10, embedder="passthrough",
                                                       backend="brute", metric=metric)),
                      ("sklearn brute", NearestNeighbors(n_neighbors=10, algorithm="brute",
                                                         metric=metric))):
        est.fit(X)
        t, _ = median_time(lambda est=est: est.kneighbors(T), repeats)
        print(f"{name:<14} {len(X) // 1000}k x {X.shape[1]} {metric}, {len(T) // 1000}k "
              f"queries: {len(T) / t:8,.0f} q/s (median of {repeats})")


def exact_speed_generated(repeats):
    from skknn.datasets import make_embedding_like

    for n_features, metric in ((32, "euclidean"), (384, "cosine")):
        data = make_embedding_like(105_000, n_features, random_state=0)[0].astype(np.float32)
        exact_speed(data[:100_000], data[100_000:], repeats, metric)


def peak_memory():
    for name in ("skknn", "sklearn"):
        out = subprocess.run([sys.executable, "-c", _PEAK, name], capture_output=True,
                             text=True, check=True).stdout.split()
        peak, loaded, qps = (float(v) for v in out)
        print(f"{name:<8} 200k queries vs 20k: peak RSS {peak:,.0f} MB (data and queries "
              f"alone {loaded:,.0f} MB), {qps:,.0f} q/s")


def first_call(X, T):
    from skknn import LearnedNeighbors

    nn = LearnedNeighbors(random_state=0).fit(X[:20000])
    times = median_time(lambda: nn.kneighbors(T[:2000]), 4)[1]
    print(f"first kneighbors(2000) after fit: {times[0]:.3f} s, repeats "
          f"{', '.join(f'{t:.3f}' for t in times[1:])} s: "
          f"{times[0] / np.median(times[1:]):.2f}x")


def centroid_fit(X):
    from skknn import ClusterFilteredKNN

    tic = time.perf_counter()
    ClusterFilteredKNN(10, router="centroid", random_state=0).fit(X[:20000])
    print(f"ClusterFilteredKNN(router='centroid') fit, 20k x 784 float32: "
          f"{time.perf_counter() - tic:.1f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    X, _, T, _ = load_fashion_mnist()
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB)")
    exact_speed(X, T, args.repeats)
    exact_speed_generated(args.repeats)
    peak_memory()
    first_call(X, T)
    centroid_fit(X)


if __name__ == "__main__":
    main()
