"""
Quick start: LearnedNeighbors as a drop-in for NearestNeighbors
===============================================================

Fit :class:`skknn.LearnedNeighbors` on the digits, ask for the recall it should
reach, and compare its answers and speed with exact brute force.
"""

import time

from sklearn.datasets import load_digits
from sklearn.neighbors import NearestNeighbors

from skknn import LearnedNeighbors

X, _ = load_digits(return_X_y=True)
X_train, X_test = X[:1500], X[1500:]

# %%
# Exact search, the reference.
exact = NearestNeighbors(n_neighbors=10).fit(X_train)
true_dist, true_ind = exact.kneighbors(X_test)

# %%
# Learned search: an autoencoder embeds the data, candidates are found in the
# embedding, then re-ranked by exact distance. ``target_recall`` makes ``fit``
# pick the smallest number of candidates that reaches it on a held-out sample.
tic = time.perf_counter()
nn = LearnedNeighbors(n_neighbors=10, target_recall=0.95, random_state=0).fit(X_train)
print(f"fit in {time.perf_counter() - tic:.1f} s; recall measured at fit: {nn.recall_:.3f}")
print("search effort chosen:", nn.search_params_)

dist, ind = nn.kneighbors(X_test)
found = sum(len(set(a) & set(b)) for a, b in zip(ind, true_ind)) / true_ind.size
print(f"recall@10 on the test queries: {found:.3f}")

# %%
# The distances are exact input-space distances, never embedding distances.
same = ind == true_ind
print("largest distance error where the same neighbour was found:",
      abs(dist[same] - true_dist[same]).max())

# %%
# ``embedder='passthrough', backend='brute'`` is exact search: the same
# distances as ``NearestNeighbors``. Among neighbours at the same distance
# (frequent on the digits' integer pixels) it lists the lower row first, where
# ``NearestNeighbors`` leaves their order unspecified, so compare distances.
exact_dist, exact_ind = LearnedNeighbors(
    n_neighbors=10, embedder="passthrough", backend="brute"
).fit(X_train).kneighbors(X_test)
print("exact setting, same distances:", (exact_dist == true_dist).all())
print("queries whose neighbours differ only in the order of ties:",
      (exact_ind != true_ind).any(axis=1).sum())
