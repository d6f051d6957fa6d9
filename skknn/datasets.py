"""Loaders for the benchmark data sets."""

import gzip
import os
from pathlib import Path

import numpy as np

_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def fashion_mnist_dirs():
    """Folders searched for Fashion-MNIST, in order.

    ``$SKKNN_FASHION_MNIST``, then ``shared/data/fashion-mnist`` beside the
    checkout this package lives in (and beside the working directory), then
    ``/usr/share/datasets/fashion-mnist`` where Debian's
    ``dataset-fashion-mnist`` package installs it.
    """
    dirs = []
    if os.environ.get("SKKNN_FASHION_MNIST"):
        dirs.append(Path(os.environ["SKKNN_FASHION_MNIST"]))
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        dirs.append(root.parent / "shared" / "data" / "fashion-mnist")
    dirs.append(Path("/usr/share/datasets/fashion-mnist"))
    return dirs


def read_idx(path):
    """Read one idx file (optionally gzip-compressed) into an array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number {data[:4]!r}).")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: header says shape {shape} "
            f"({expected} bytes) but {len(data) - offset} bytes follow."
        )
    return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _find_file(folder, stem):
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(data_dir=None, dtype=np.float32):
    """Load Fashion-MNIST (Zalando, MIT licence) from local idx files.

    Nothing is downloaded. The four original files (``.gz`` or not) are read
    from ``data_dir`` if given, else from the first of
    :func:`fashion_mnist_dirs` that holds them.

    Parameters
    ----------
    data_dir : str or path, default=None
        Folder holding the four idx files.
    dtype : dtype, default=np.float32
        Dtype of the images (pixel values 0-255, not rescaled).

    Returns
    -------
    X_train : ndarray of shape (60000, 784)
    y_train : ndarray of shape (60000,)
    X_test : ndarray of shape (10000, 784)
    y_test : ndarray of shape (10000,)

    Raises
    ------
    FileNotFoundError
        If no folder holds the files; the message lists where it looked.
    """
    dirs = [Path(data_dir)] if data_dir is not None else fashion_mnist_dirs()
    for folder in dirs:
        paths = {key: _find_file(folder, stem) for key, stem in _FASHION_FILES.items()}
        if all(paths.values()):
            break
    else:
        raise FileNotFoundError(
            "Fashion-MNIST idx files (" + ", ".join(_FASHION_FILES.values()) + ", optionally "
            ".gz) were not found in: " + ", ".join(str(d) for d in dirs)
            + ". Pass data_dir, or install Debian's dataset-fashion-mnist."
        )
    arrays = {key: read_idx(path) for key, path in paths.items()}
    X_train = arrays["train_images"].reshape(len(arrays["train_images"]), -1).astype(dtype)
    X_test = arrays["test_images"].reshape(len(arrays["test_images"]), -1).astype(dtype)
    for images, labels in (("train_images", "train_labels"), ("test_images", "test_labels")):
        if len(arrays[images]) != len(arrays[labels]):
            raise ValueError(
                f"{paths[images]} holds {len(arrays[images])} images but {paths[labels]} "
                f"holds {len(arrays[labels])} labels."
            )
    y_train = arrays["train_labels"].astype(np.intp)
    return X_train, y_train, X_test, arrays["test_labels"].astype(np.intp)


def make_embedding_like(n_samples=100_000, n_features=384, *, n_topics=1000,
                        spectrum_decay=0.7, spread=0.6, shared_direction=0.5,
                        random_state=None):
    """Unit vectors shaped like the outputs of a text or image embedding model.

    Embedding models give unit-normalised vectors whose covariance spectrum
    decays like a power law, that cluster by topic, and that share a common
    direction (the "cone": random pairs have positive cosine similarity).
    This generator draws exactly that, so benchmarks need no download:

    1. a random orthonormal basis, and axis variances ``i ** -spectrum_decay``
       for ``i = 1 .. n_features`` (the power-law spectrum);
    2. ``n_topics`` topic centres drawn with that covariance, topic sizes
       Zipf-distributed (a few large topics, many small ones);
    3. each vector = its topic centre + ``spread`` times a draw with the same
       covariance + ``shared_direction`` times one fixed unit vector (scaled
       to the centres' typical norm), then normalised to unit length.

    Parameters
    ----------
    n_samples : int, default=100_000
    n_features : int, default=384
        Dimension (384 is that of many sentence-embedding models).
    n_topics : int, default=1000
    spectrum_decay : float, default=0.7
        Exponent of the power-law variance spectrum. With the defaults the
        first 32 of 384 principal components hold 57% of the variance, 128
        hold 82% (measured on 20,000 rows).
    spread : float, default=0.6
        Within-topic spread relative to the spread of the topic centres.
    shared_direction : float, default=0.5
        Weight of the direction every vector shares.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), float32
        Unit-norm rows.
    topic : ndarray of shape (n_samples,)
        The topic of each row.
    """
    from sklearn.utils import check_random_state, gen_batches

    rng = check_random_state(random_state)
    basis, _ = np.linalg.qr(rng.standard_normal((n_features, n_features)))
    scale = np.arange(1, n_features + 1) ** (-spectrum_decay / 2.0)

    def draw(n):
        return (rng.standard_normal((n, n_features)) * scale) @ basis.T

    centres = draw(n_topics)
    shared = rng.standard_normal(n_features)
    shared *= np.sqrt((scale**2).sum()) / np.linalg.norm(shared)
    weights = 1.0 / np.arange(1, n_topics + 1)
    topic = rng.choice(n_topics, size=n_samples, p=weights / weights.sum())
    X = np.empty((n_samples, n_features), dtype=np.float32)
    for rows in gen_batches(n_samples, 16_384):
        V = centres[topic[rows]] + spread * draw(rows.stop - rows.start)
        V += shared_direction * shared
        X[rows] = V / np.linalg.norm(V, axis=1, keepdims=True)
    return X, topic
