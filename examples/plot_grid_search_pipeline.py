"""
GridSearchCV over a Pipeline with an approximate neighbour graph
================================================================

Like :class:`sklearn.neighbors.KNeighborsTransformer`, every skknn search
estimator is a transformer whose ``transform`` returns the sparse graph of
each point's ``n_neighbors`` nearest fitted points. A
:class:`~sklearn.neighbors.KNeighborsClassifier` with ``metric='precomputed'``
reads that graph, so the neighbour search is a step of the Pipeline, and its
settings (here ``n_probe``, the clusters searched) are tuned by
:class:`~sklearn.model_selection.GridSearchCV` together with the classifier's.
"""

from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline

from skknn import ClusterFilteredKNN

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)

# %%
# The graph must hold at least as many neighbours as the classifier uses:
# ``n_neighbors`` of the search is set to the largest value in the grid.
pipe = Pipeline([
    ("graph", ClusterFilteredKNN(n_neighbors=10, router="centroid", n_clusters=16,
                                 random_state=0)),
    ("knn", KNeighborsClassifier(metric="precomputed")),
])
grid = GridSearchCV(
    pipe,
    {"graph__n_probe": [1, 2, 4, 16], "knn__n_neighbors": [1, 5, 10]},
    cv=3,
)
grid.fit(X_train, y_train)

res = grid.cv_results_
print("n_probe  n_neighbors  accuracy  fit s")
for i in res["mean_test_score"].argsort()[::-1]:
    print(f"{res['param_graph__n_probe'][i]:>7}  {res['param_knn__n_neighbors'][i]:>11}  "
          f"{res['mean_test_score'][i]:8.3f}  {res['mean_fit_time'][i]:5.2f}")
print("best:", grid.best_params_, f"test accuracy {grid.score(X_test, y_test):.3f}")

# %%
# With ``n_probe=16`` (all clusters) the search is exact, so that row is the
# plain k-NN classifier; fewer probes trade a little accuracy for speed.
