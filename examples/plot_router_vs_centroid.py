"""
Learned router against centroid routing
=======================================

:class:`skknn.ClusterFilteredKNN` searches only the clusters a router picks.
With its defaults it follows Neural LSH: the clusters are a balanced METIS
partition of the k-nearest-neighbour graph, and a network trained on where
each point's *neighbours* live sends a query to its most probable clusters
until their probability reaches ``probe_mass``. ``router='centroid'`` is the
plain inverted file: k-means cells, the ``n_probe`` nearest centres. Here
recall@10 is drawn against the mean number of candidates (points searched per
query) as each one's effort grows.

What to expect: on Fashion-MNIST (60k points, 245 clusters,
``benchmarks/bench_cluster.py``) the defaults need about 0.69x the candidates
of centroid routing at recall 0.90. With 10k points, as here, the gap is
smaller.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.neighbors import NearestNeighbors

from skknn import ClusterFilteredKNN
from skknn.datasets import load_fashion_mnist

try:
    X, _, Q, _ = load_fashion_mnist()
    X, Q, data = X[:10_000], Q[:2000], "Fashion-MNIST (10k points)"
except FileNotFoundError as exc:
    print(exc)
    X = load_digits().data
    X, Q, data = X[300:], X[:300], "digits"

k = 10
true_ind = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(Q)[1]

learned = ClusterFilteredKNN(n_neighbors=k, epochs=15, random_state=0).fit(X)
centroid = ClusterFilteredKNN(n_neighbors=k, router="centroid", random_state=0).fit(X)
print(f"{learned.n_clusters_} clusters: {learned.partition_} partition for the router "
      f"(trained {learned.n_iter_} epochs), {centroid.partition_} cells for the centroids")

# %%
# Recall and candidates for each effort: assigning ``search_params_`` changes
# the effort without refitting, ``route`` returns the clusters each query is
# sent to (-1 after its last) and ``mean_candidates`` their total size.
efforts = {
    "graph + mlp router": [{"probe_mass": m} for m in (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)],
    "k-means + centroids": [{"n_probe": n} for n in (1, 2, 3, 4, 6, 8, 12)],
}
fig, ax = plt.subplots(figsize=(6, 4))
for (name, grid), est in zip(efforts.items(), (learned, centroid)):
    recall, candidates = [], []
    for params in grid:
        est.search_params_ = params
        ind = est.kneighbors(Q, return_distance=False)
        recall.append(np.mean([len(set(a) & set(b)) / k for a, b in zip(ind, true_ind)]))
        candidates.append(est.mean_candidates(Q))
        print(f"{name:<20} {str(params):<22} recall@10={recall[-1]:.3f} "
              f"candidates={candidates[-1]:7.0f}")
    ax.plot(candidates, recall, "o-", label=name)
ax.set_xlabel("mean candidates per query")
ax.set_ylabel("recall@10")
ax.set_title(f"ClusterFilteredKNN on {data}")
ax.legend()
plt.show()
