"""
Learned router against centroid routing
=======================================

:class:`skknn.ClusterFilteredKNN` searches only the clusters a router picks.
``router='centroid'`` probes the nearest cluster centres (an inverted-file
index); ``router='mlp'`` is a network trained to predict which clusters hold a
point's *neighbours* (Neural LSH's soft labels). Here both route over the
same clusters, and recall@10 is drawn against the mean number of candidates
(points searched per query) as ``n_probe`` grows.

What to expect: on k-means clusters the two are close. On Fashion-MNIST
(60k points, 245 clusters, ``benchmarks/bench_cluster.py``) the network
needs about as many candidates as centroid routing at recall 0.90; an oracle
that knows the true neighbours would need ~0.7x, because about a third of
all 10-NN pairs straddle a cluster boundary.
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

# The same ``random_state`` gives the same k-means clusters to both routers.
mlp = ClusterFilteredKNN(n_neighbors=k, router="mlp", epochs=15, random_state=0).fit(X)
centroid = ClusterFilteredKNN(n_neighbors=k, router="centroid", random_state=0).fit(X)
assert (mlp.labels_ == centroid.labels_).all()
print(f"{mlp.n_clusters_} clusters; router trained for {mlp.n_iter_} epochs")

# %%
# Recall and candidates for each number of probed clusters: assigning
# ``search_params_`` changes the effort without refitting, ``route`` returns
# the clusters a query is sent to and ``mean_candidates`` their total size.
fig, ax = plt.subplots(figsize=(6, 4))
for name, est in (("mlp router", mlp), ("centroid router", centroid)):
    recall, candidates = [], []
    for n_probe in (1, 2, 3, 4, 6, 8, 12):
        est.search_params_ = {"n_probe": n_probe}
        ind = est.kneighbors(Q, return_distance=False)
        recall.append(np.mean([len(set(a) & set(b)) / k for a, b in zip(ind, true_ind)]))
        candidates.append(est.mean_candidates(Q))
        print(f"{name:<16} n_probe={n_probe:<3} recall@10={recall[-1]:.3f} "
              f"candidates={candidates[-1]:7.0f}")
    ax.plot(candidates, recall, "o-", label=name)
ax.set_xlabel("mean candidates per query")
ax.set_ylabel("recall@10")
ax.set_title(f"ClusterFilteredKNN on {data}")
ax.legend()
plt.show()
