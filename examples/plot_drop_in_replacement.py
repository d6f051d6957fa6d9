"""
Drop-in replacement for NearestNeighbors in an existing script
==============================================================

A script written for :class:`sklearn.neighbors.NearestNeighbors` keeps working
when the estimator is swapped for :class:`skknn.ClusterFilteredKNN` or
:class:`skknn.LearnedNeighbors`: the same ``fit``, ``kneighbors``,
``radius_neighbors`` and ``kneighbors_graph``, the same output shapes and
conventions (``X=None`` excludes each point from its own neighbours; distances
are exact distances). Only speed and recall change, and ``recall_`` says by
how much. (On data this small exact brute force is the fastest; the speed-ups
are on the benchmark page.)
"""

import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.neighbors import NearestNeighbors

from skknn import ClusterFilteredKNN, LearnedNeighbors

X = load_digits().data
queries = X[:300]


# %%
# The "existing script": everything it does with its neighbour index.
def analyse(nn, name):
    tic = time.perf_counter()
    nn.fit(X)
    fit_s = time.perf_counter() - tic
    tic = time.perf_counter()
    dist, ind = nn.kneighbors(queries)
    query_s = time.perf_counter() - tic
    graph = nn.kneighbors_graph(n_neighbors=5, mode="distance")  # X=None: no self-loops
    radius_dist, _ = nn.radius_neighbors(queries[:5], radius=dist[:5, -1].max())
    print(f"{name:<20} fit {fit_s:5.2f} s  {len(queries) / query_s:9,.0f} queries/s  "
          f"graph {graph.shape} nnz={graph.nnz}  points within the radius: "
          f"{[len(d) for d in radius_dist]}")
    return ind


# %%
# The original, then the two replacements: the only line that changes is the
# constructor.
true_ind = analyse(NearestNeighbors(n_neighbors=10), "NearestNeighbors")
for name, nn in [
    ("ClusterFilteredKNN", ClusterFilteredKNN(n_neighbors=10, router="centroid",
                                              target_recall=0.95, random_state=0)),
    ("LearnedNeighbors", LearnedNeighbors(n_neighbors=10, target_recall=0.95,
                                          random_state=0)),
]:
    ind = analyse(nn, name)
    found = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ind, true_ind)])
    print(f"{'':<20} recall_ measured at fit: {nn.recall_:.3f}; "
          f"on these queries: {found:.3f}; effort: {nn.search_params_}")

# %%
# ``radius_neighbors`` on an approximate index searches the same candidates as
# ``kneighbors``: the probed clusters for ClusterFilteredKNN, the k-NN
# candidates for LearnedNeighbors (a query whose candidates all fall within
# the radius is searched exactly), so it can miss points (compare the counts
# above); with every cluster probed (``n_probe=n_clusters``) or with
# ``embedder='passthrough', backend='brute'`` both estimators are exact.
