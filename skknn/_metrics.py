"""Metric handling shared by every search estimator.

A :class:`Metric` knows two ways to measure distances:

* :meth:`Metric.block` -- a dense block of distances between two sets of rows,
  fast (one matrix product for the Euclidean family and cosine) but, for the
  Euclidean family, subject to the cancellation error of the expanded
  ``|a|^2 - 2 a.b + |b|^2`` formula. It is used to *select* neighbours.
* :meth:`Metric.paired` -- distances between aligned pairs of rows, computed
  from differences, hence accurate. It is used for every distance that is
  *returned* to the user.
"""

from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist

_ALIASES = {
    "euclidean": "euclidean",
    "l2": "euclidean",
    "sqeuclidean": "sqeuclidean",
    "manhattan": "manhattan",
    "cityblock": "manhattan",
    "l1": "manhattan",
    "cosine": "cosine",
    "chebyshev": "chebyshev",
    "infinity": "chebyshev",
    "minkowski": "minkowski",
}

#: Names accepted for the ``metric`` parameter.
SUPPORTED_METRICS = tuple(sorted(_ALIASES))

_CDIST_NAMES = {"manhattan": "cityblock", "chebyshev": "chebyshev"}


@dataclass(frozen=True)
class Metric:
    """A resolved metric: canonical ``name`` and Minkowski power ``p``."""

    name: str
    p: float = 2.0

    @property
    def sklearn_name(self):
        """Name under which scikit-learn computes the same distance."""
        return self.name

    @property
    def sklearn_params(self):
        """``metric_params`` that scikit-learn needs for the same distance."""
        return {"p": self.p} if self.name == "minkowski" else {}

    @property
    def is_dot_product(self):
        """Whether :meth:`block` uses one matrix product."""
        return self.name in ("euclidean", "sqeuclidean", "cosine")

    def prepare(self, X):
        """Return the rows in the form :meth:`block` and :meth:`paired` expect.

        Cosine works on unit-normalised rows; as in scikit-learn, a row whose
        norm is below ``10 * eps`` counts as a zero row, has no direction and
        is at distance 1 from everything. The other metrics work on the rows
        as they are.
        """
        if self.name != "cosine":
            return X
        norms = np.sqrt(np.einsum("ij,ij->i", X, X))
        norms[norms < 10 * np.finfo(X.dtype).eps] = 1.0
        return X / norms[:, None]

    def block(self, A, B, B_sqnorm=None):
        """Distances between every row of prepared ``A`` and prepared ``B``.

        Returns a *ranking* distance, monotone in the true one (squared
        distances for the Euclidean family), of shape ``(len(A), len(B))``.
        Convert with :meth:`from_ranking`.
        """
        if self.name in ("euclidean", "sqeuclidean"):
            if B_sqnorm is None:
                B_sqnorm = np.einsum("ij,ij->i", B, B)
            D = A @ B.T
            D *= -2.0
            D += np.einsum("ij,ij->i", A, A)[:, None]
            D += B_sqnorm[None, :]
            np.maximum(D, 0.0, out=D)
            return D
        if self.name == "cosine":
            D = A @ B.T
            np.subtract(1.0, D, out=D)
            np.clip(D, 0.0, 2.0, out=D)
            return D
        if self.name == "minkowski":
            return cdist(A, B, metric="minkowski", p=self.p).astype(A.dtype, copy=False)
        return cdist(A, B, metric=_CDIST_NAMES[self.name]).astype(A.dtype, copy=False)

    def from_ranking(self, D):
        """Map a ranking distance from :meth:`block` to the true distance."""
        if self.name == "euclidean":
            return np.sqrt(D)
        return D

    def to_ranking(self, radius):
        """Map a true distance (e.g. a radius) to the ranking scale."""
        if self.name == "euclidean":
            return radius * radius
        return radius

    def paired(self, A, B):
        """Accurate distances between aligned rows of prepared ``A`` and ``B``.

        ``A`` and ``B`` broadcast against each other along all but the last
        axis, e.g. ``A[:, None, :]`` against ``B`` of shape ``(n, c, d)``.
        """
        diff = A - B
        if self.name in ("euclidean", "sqeuclidean", "cosine"):
            sq = np.einsum("...j,...j->...", diff, diff)
            if self.name == "euclidean":
                return np.sqrt(sq)
            if self.name == "cosine":
                # 1 - a.b == |a - b|^2 / 2 + 1 - (|a|^2 + |b|^2) / 2. For unit
                # rows the last terms vanish and |a - b|^2 / 2 keeps its
                # precision for nearly equal rows, where 1 - a.b does not; for
                # a zero row (no direction) they make the distance 1.
                norms = np.einsum("...j,...j->...", A, A, dtype=np.float64) + np.einsum(
                    "...j,...j->...", B, B, dtype=np.float64
                )
                return np.clip(0.5 * sq + (1.0 - 0.5 * norms), 0.0, 2.0)
            return sq
        np.abs(diff, out=diff)
        if self.name == "manhattan":
            return diff.sum(axis=-1)
        if self.name == "chebyshev":
            return diff.max(axis=-1)
        return np.power(np.power(diff, self.p).sum(axis=-1), 1.0 / self.p)


def resolve_metric(metric, p=2, metric_params=None):
    """Resolve the ``metric``/``p``/``metric_params`` triple of an estimator.

    Follows :class:`sklearn.neighbors.NearestNeighbors`: ``'minkowski'`` with
    ``p=2`` is Euclidean, with ``p=1`` Manhattan, with ``p=inf`` Chebyshev; a
    ``'p'`` key in ``metric_params`` overrides ``p``.

    Raises
    ------
    ValueError
        If the metric is not supported, ``p < 1``, or ``metric_params`` holds
        a key the metric does not take.
    """
    if not isinstance(metric, str) or metric not in _ALIASES:
        raise ValueError(
            f"metric={metric!r} is not supported. Supported metrics are "
            f"{', '.join(SUPPORTED_METRICS)} (minkowski with p >= 1)."
        )
    params = dict(metric_params or {})
    name = _ALIASES[metric]
    if name == "minkowski":
        p = params.pop("p", p)
        if p is None or not np.isreal(p) or p < 1:
            raise ValueError(f"metric='minkowski' needs p >= 1, got p={p!r}.")
        if p == 1:
            name = "manhattan"
        elif p == 2:
            name = "euclidean"
        elif np.isinf(p):
            name = "chebyshev"
    if params:
        raise ValueError(
            f"metric_params {sorted(params)} are not used by metric={metric!r}; "
            "only metric='minkowski' takes a parameter ('p')."
        )
    return Metric(name, float(p) if name == "minkowski" else 2.0)
