"""skknn: learned nearest-neighbour search for scikit-learn.

Keras, its backend and pynndescent are imported only when first needed, so
``import skknn`` stays fast.
"""

from ._autoencoder import AutoencoderEmbedder
from ._cluster_filtered import ClusterFilteredKNN
from ._dask_setup import setup_dask_workers
from ._fan_out import ShardLostError
from ._learned import LearnedNeighbors
from ._metrics import SUPPORTED_METRICS
from ._sharded import ShardedNeighbors
from ._triplet import TripletEmbedder

__version__ = "0.1.0.dev0"

__all__ = [
    "AutoencoderEmbedder",
    "ClusterFilteredKNN",
    "LearnedNeighbors",
    "SUPPORTED_METRICS",
    "ShardLostError",
    "ShardedNeighbors",
    "TripletEmbedder",
    "__version__",
    "setup_dask_workers",
]
