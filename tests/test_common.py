"""scikit-learn's estimator checks over every public estimator."""

import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from skknn import AutoencoderEmbedder, ClusterFilteredKNN, LearnedNeighbors, TripletEmbedder

FAST = {"hidden_layer_sizes": (8,), "n_components": 3, "epochs": 2, "batch_size": 32}

ESTIMATORS = [
    AutoencoderEmbedder(**FAST, random_state=0),
    LearnedNeighbors(embedder=AutoencoderEmbedder(**FAST, random_state=0), random_state=0),
    LearnedNeighbors(embedder="passthrough", backend="brute"),
    ClusterFilteredKNN(hidden_layer_sizes=(8,), epochs=2, batch_size=32, random_state=0),
    ClusterFilteredKNN(router="centroid", random_state=0),
    TripletEmbedder(hidden_layer_sizes=(8,), n_components=3, epochs=2, batch_size=16,
                    random_state=0),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        # epochs=2 is deliberately too few to converge.
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
