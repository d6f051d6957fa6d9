"""
Metric learning in a Pipeline, tuned with GridSearchCV
======================================================

:class:`skknn.TripletEmbedder` is a transformer: put it in front of a
:class:`~sklearn.neighbors.KNeighborsClassifier` and tune its triplet-loss
``margin`` and ``miner`` like any other hyper-parameter. Digits keep this
example fast; ``benchmarks/bench_triplet.py`` runs the same on Fashion-MNIST.
"""

import warnings

from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline

from skknn import TripletEmbedder

warnings.simplefilter("ignore", ConvergenceWarning)  # few epochs, on purpose

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0, stratify=y)

# %%
# The pipeline: a 16-dimensional learned embedding, then 5-NN.
pipe = make_pipeline(
    TripletEmbedder(n_components=16, hidden_layer_sizes=(64,), epochs=15, random_state=0),
    KNeighborsClassifier(n_neighbors=5),
)

# %%
# Search over the margin of the loss and the way triplets are mined in a batch.
grid = GridSearchCV(
    pipe,
    {
        "tripletembedder__margin": [0.1, 0.3],
        "tripletembedder__miner": ["batch_hard", "batch_all"],
    },
    cv=2,
)
grid.fit(X_train, y_train)
for params, score in zip(grid.cv_results_["params"], grid.cv_results_["mean_test_score"]):
    print(f"{params}: cross-validated accuracy {score:.3f}")
print("best:", grid.best_params_)
print(f"test accuracy of the best pipeline: {grid.score(X_test, y_test):.3f}")

# %%
# The baseline: 5-NN on the raw pixels. On the digits it is hard to beat (raw
# 5-NN is already ~98% accurate); the learned metric pays off where raw
# distances are misleading, e.g. on Fashion-MNIST (see the benchmark).
raw = KNeighborsClassifier(n_neighbors=5).fit(X_train, y_train).score(X_test, y_test)
print(f"test accuracy on raw pixels: {raw:.3f}")
