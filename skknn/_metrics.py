"""Metrics, and the forms in which fitted rows are searched.

Two ways to measure distances are used, never mixed up:

* *Ranking* values, fast: for the Euclidean family and cosine one float32
  matrix product of rows that were centred and scaled first
  (:class:`Space`), so that cancellation in the expanded
  ``|a|^2 - 2 a.b + |b|^2`` formula stays small and bounded
  (:attr:`Space.tol`). They only *select* rows, with a margin that covers
  their error.
* Exact distances, :meth:`Metric.paired`: float64, from differences of the
  rows as given. Every distance that is returned, and every final decision
  between rows, is made with these.

The other metrics (Manhattan, Chebyshev, Minkowski) are ranked with scipy's
``cdist``, which already computes in float64 from differences.
"""

import threading
from dataclasses import dataclass

import numpy as np
from sklearn.utils import gen_batches

from ._kernels import centre_rows, in_slices, preload

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

_CDIST_NAMES = {"manhattan": "cityblock", "chebyshev": "chebyshev", "minkowski": "minkowski"}
# Rows transformed to float64 at once (bounds the temporaries of Space).
_ROW_CHUNK = 4096
# Values (pairs x features) of the differences re-summed at once by Metric.cdist.
_PAIR_VALUES = 2**20
# Metric.cdist scales the rows first where the typical row's magnitude to the
# power p is beyond 2**+-_POWER_BITS: well inside float64's 2**+-1022, with
# room for the number of features and the rows' spread.
_POWER_BITS = 256

# inlier_rows: rows farther from the coordinate-wise median than this many
# times the median row are outliers for the scalings fitted on the data;
# the median is taken over at most this many evenly spaced rows.
_OUTLIER_FACTOR = 100
_MEDIAN_SAMPLE = 2_000
# Ranking rows of the fitted rows stay within 2**_BLOCK_REACH of the centre
# (inliers are scaled to ~1; an outlier far beyond is scaled down with them).
_BLOCK_REACH = 40
#: Largest magnitude of float64 values that can be searched: beyond it,
#: squared differences overflow float64 (float32 values always fit).
MAX_ABS_VALUE = 2.0**500
#: Sums of powers of differences (Euclidean, Minkowski) computed as they
#: stand are used where they lie in this range; others are computed again
#: from the differences divided by the largest (``Metric._powered``, and
#: ``scaled_pow_diff`` in the compiled kernel).
#: Above, the sum overflowed (Minkowski ``p > 2`` on values well within
#: ``MAX_ABS_VALUE``, or a large ``p``); below, it may have lost digits to
#: subnormal terms, or underflowed to 0 (e.g. data ~1e-160, or differences
#: of 1e-7 to the power 50). A subnormal term loses at most ``2**-1075``:
#: below ``2**-53`` of any sum in the range for fewer than ``2**62`` features.
POWER_SUM_RANGE = (2.0**-960, np.inf)


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
        """Whether rows are ranked with one matrix product (see :class:`Space`)."""
        return self.name in ("euclidean", "sqeuclidean", "cosine")

    def cdist(self, A, B):
        """Exact float64 distances (scipy, from differences) for the other metrics."""
        from scipy.spatial.distance import cdist

        if self.name != "minkowski":
            return cdist(A, B, metric=_CDIST_NAMES[self.name])
        # Rows far from 1 in magnitude (the typical row, so that an outlier
        # does not decide): divided by a power of two (exact), so that the
        # sums of powers of most pairs lie in POWER_SUM_RANGE; rows near 1 as
        # they are.
        magnitudes = np.concatenate([np.abs(A).max(axis=1, initial=0.0),
                                     np.abs(B).max(axis=1, initial=0.0)])
        typical = np.median(magnitudes) if len(magnitudes) else 0.0
        unit = 1.0
        if self.p * abs(np.frexp(typical)[1]) > _POWER_BITS:
            unit = _power_of_two_inverse(typical)
            D = cdist(np.multiply(A, unit, dtype=np.float64),
                      np.multiply(B, unit, dtype=np.float64), metric="minkowski", p=self.p)
        else:
            D = cdist(A, B, metric="minkowski", p=self.p)
        # Sums of powers out of POWER_SUM_RANGE: again, from the differences
        # divided by the largest.
        low, high = (bound ** (1.0 / self.p) for bound in POWER_SUM_RANGE)
        i, j = nonzero_2d(~((D >= low) & (D < high)))
        if unit != 1.0:
            D /= unit
        # A batch of pairs at a time: their differences are (pairs x
        # features), up to features times the size of D.
        batch = max(1, _PAIR_VALUES // max(1, np.shape(A)[1]))
        for start in range(0, len(i), batch):
            rows, cols = i[start:start + batch], j[start:start + batch]
            D[rows, cols] = self._powered(np.asarray(A)[rows].astype(np.float64)
                                          - np.asarray(B)[cols].astype(np.float64))
        return D

    def paired(self, A, B):
        """Exact float64 distances between aligned rows of ``A`` and ``B``.

        ``A`` and ``B`` broadcast against each other along all but the last
        axis, e.g. ``A[:, None, :]`` against ``B`` of shape ``(n, c, d)``.
        For cosine, rows are normalised here in float64 and a row of zeros has
        no direction: it is at distance 1 from everything, as in scikit-learn.
        Only a row of zeros: any threshold on the norm would depend on the
        data's units (scikit-learn's 10 eps does).
        """
        A = np.asarray(A, dtype=np.float64)
        B = np.asarray(B, dtype=np.float64)
        if self.name == "cosine":
            A, a_zero = _unit_rows(A)
            B, b_zero = _unit_rows(B)
            diff = A - B
            # |a - b|^2 / 2 == 1 - a.b for unit rows, without the cancellation.
            dist = np.clip(0.5 * np.einsum("...j,...j->...", diff, diff), 0.0, 2.0)
            return np.where(a_zero | b_zero, 1.0, dist)
        diff = A - B
        if self.name == "manhattan":
            return np.abs(diff).sum(axis=-1)
        if self.name == "chebyshev":
            return np.abs(diff).max(axis=-1, initial=0.0)
        return self._powered(diff)

    def _powered(self, diff):
        """Euclidean-family and Minkowski distances from float64 differences
        (last axis; overwritten); sums of powers out of ``POWER_SUM_RANGE``
        are computed again from the differences divided by the largest."""
        power = 2.0 if self.name in ("euclidean", "sqeuclidean") else self.p
        with np.errstate(over="ignore", under="ignore"):
            if power == 2.0:
                sums = np.einsum("...j,...j->...", diff, diff)
            else:
                np.abs(diff, out=diff)
                sums = np.power(diff, power).sum(axis=-1)
            redo = ~((sums >= POWER_SUM_RANGE[0]) & (sums < POWER_SUM_RANGE[1]))
            big = np.ones_like(sums)
            if redo.any():
                part = np.abs(diff[redo])
                big[redo] = part.max(axis=-1, initial=0.0)
                part /= np.where(big[redo] > 0, big[redo], 1.0)[:, None]
                sums[redo] = np.power(part, power).sum(axis=-1)
        if self.name == "sqeuclidean":
            return big * big * sums
        return big * (np.sqrt(sums) if power == 2.0 else np.power(sums, 1.0 / power))


def nonzero_2d(mask):
    """``np.nonzero`` of a 2-D boolean array, from its flat positions (the
    same pairs in the same order; 2-D ``nonzero`` took 11x as long on
    1,024 x 5,000, measured)."""
    return np.divmod(np.flatnonzero(mask), mask.shape[1])


def _unit_rows(A):
    """Unit rows of float64 ``A`` and which rows have no direction.

    Rows are divided by their largest entry first, then by their norm: tiny
    or huge rows neither underflow nor overflow, and proportional rows give
    identical unit rows (IEEE division is correctly rounded), hence a
    distance of exactly 0. The compiled kernel does the same.
    """
    big = np.abs(A).max(axis=-1, initial=0.0)
    A = A / np.where(big > 0, big, 1.0)[..., None]
    norms = np.sqrt(np.einsum("...j,...j->...", A, A))
    zero = ~(big > 0)
    return A / np.where(zero, 1.0, norms)[..., None], zero


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
        if p is None or not np.isreal(p) or not p >= 1:
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


_RANKING_LOCK = threading.Lock()


class Rows:
    """Rows in the two forms search uses.

    ``data``: the rows as given, in their own dtype; exact distances are
    computed from them. ``block``: the ranking form, float32 rows centred and
    scaled (unit rows for cosine) for the dot-product metrics, ``data`` itself
    for the others. ``sq``: squared norms of ``block`` in float64 (None for
    the other metrics). The ranking form is computed on first use, so
    searches that only re-rank (learned candidates) never pay for it.
    """

    def __init__(self, data, make_block=None, block=None, sq=None):
        self.data = data
        self._make_block = make_block
        self._block, self._sq = block, sq

    def _ranking(self):
        if self._block is None:
            with _RANKING_LOCK:  # threads searching slices share the fitted rows
                if self._block is None:
                    self._block, self._sq = self._make_block(self.data)
        return self._block, self._sq

    def prepare(self, n_jobs=1):
        """Compute the ranking form now, slices of the rows side by side.

        Returns self; slices of it (``rows[i:j]``) then share the result.
        """
        if self._block is None and self._make_block is not None and len(self.data):
            block, sq = self._make_block(self.data, n_jobs)
            with _RANKING_LOCK:
                if self._block is None:
                    self._block, self._sq = block, sq
        return self

    @property
    def block(self):
        return self._ranking()[0]

    @property
    def sq(self):
        return self._ranking()[1]

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        data = self.data[index]
        if self._block is None:
            return Rows(data, self._make_block)
        return Rows(data, self._make_block, *self._taken(index, data))

    def _taken(self, index, data):
        """The ranking rows ``index`` and their squared norms; ``data``
        (``self.data[index]``) where the ranking rows are the data."""
        block = data if self._block is self.data else self._block[index]
        return block, None if self._sq is None else self._sq[index]

    def permuted(self, order):
        """The rows in ``order``, letting go of this object's ranking rows
        before the data are copied: at most one old and one new copy of
        either are held at once (the old ones may still be held elsewhere)."""
        if self._block is None or self._block is self.data:
            return self[order]
        block, sq = self._taken(order, None)
        self._block = self._sq = None
        return Rows(self.data[order], self._make_block, block, sq)


class Space:
    """How one fitted data set is searched exactly.

    Built from the fitted rows ``X``, it holds them as :class:`Rows`, and
    turns query rows into the same forms with :meth:`rows`:

    * For the dot-product metrics, the ranking rows are
      ``float32((row - centre) * block_scale)`` (cosine: the float64 unit
      rows in float32; float32 rows subtract the float32 centre): centring
      removes the cancellation of the expanded formula for data far from the
      origin, and the power-of-two
      ``block_scale`` keeps float32 squares in range at any scale.
    * :attr:`tol`: ranking values computed from these rows are within
      ``tol * (|q|^2 + |x|^2) + _ABS_SLACK`` of the exact ranking value of
      the same pair (in ranking units; ``|.|`` the norms of the ranking rows).
      The bound covers rounding the rows to float32 and the matrix product
      in any summation order (``n_features`` terms), with a factor 2 to spare.
    """

    #: Absolute slack of the ranking error bound (ranking rows have norms
    #: ~1, so this only matters for rows at the centre).
    ABS_SLACK = 1e-30

    def __init__(self, metric, X):
        preload()  # the re-ranking kernel, while the rows are prepared
        self.metric = metric
        self.dtype = X.dtype
        self.n_features = X.shape[1]
        self.centre, self.block_scale = None, 1.0
        if metric.name in ("euclidean", "sqeuclidean"):
            self.centre, self.block_scale = _centre_and_scale(X)
        eps32 = float(np.finfo(np.float32).eps)
        self.tol = (self.n_features + 16) * eps32
        # The ranking form of the fitted rows (a float32 copy) is made on
        # first use: exact searches need it, learned candidates never do.
        self.fitted = self.rows(X)
        self.ids = self._positions = None
        # The centre and scale of routing_rows for the other metrics.
        self._routing = None

    @property
    def out_dtype(self):
        """The dtype of returned distances: the data's, except float64 for
        sqeuclidean, as in scikit-learn: squared distances of float32 values
        leave float32's range (rows ~1e20 are 1e40 apart squared: inf; rows
        ~1e-20, 1e-40: subnormal, digits lost)."""
        return np.dtype(np.float64) if self.metric.name == "sqeuclidean" else self.dtype

    def __setstate__(self, state):
        # Unpickled (e.g. in a fresh process): load the kernel ahead of the
        # first query.
        self.__dict__.update(state)
        preload()

    # ------------------------------------------------------- row order
    def permute(self, order):
        """Store the fitted rows in ``order`` (e.g. cluster by cluster).

        Searches then return stored positions; :meth:`to_ids` maps them back
        to row numbers of the fitted data.
        """
        self.fitted = self.fitted.permuted(order)
        self.ids = np.asarray(order) if self.ids is None else self.ids[order]
        self._positions = np.argsort(self.ids)

    def positions(self, ids):
        """Where fitted rows ``ids`` (row numbers, or a slice, of the fitted data) are stored."""
        return ids if self.ids is None else self._positions[ids]

    def fitted_rows(self, ids):
        """:class:`Rows` of fitted rows, by row number (or slice) of the fitted data."""
        return self.fitted[self.positions(ids)]

    def to_ids(self, ind):
        """Stored positions (``-1``: none) to row numbers of the fitted data."""
        if self.ids is None:
            return ind
        return np.where(ind >= 0, self.ids[np.maximum(ind, 0)], -1)

    # ------------------------------------------------------------- forms
    def rows(self, X):
        """:class:`Rows` of query rows ``X`` (in the fitted dtype, user units)."""
        return Rows(np.asarray(X, dtype=self.dtype), self._ranking_form)

    def _ranking_form(self, data, n_jobs=1):
        """The ranking rows of ``data`` and their squared norms (slices of
        the rows in up to ``n_jobs`` threads)."""
        if not self.metric.is_dot_product:
            return data, None
        block = np.empty(data.shape, dtype=np.float32)
        sq = np.empty(len(data))
        # Float32 rows are centred in float32, 4x faster: one rounding of
        # x - centre, as in float64, and the centre's own rounding moves
        # fitted rows and queries alike. The power-of-two scale is exact
        # while it keeps float32 values normal.
        if data.dtype == np.float32 and self.centre is not None and (
                2.0**-100 <= self.block_scale <= 2.0**100):
            centre_rows(data, self.centre.astype(np.float32), self.block_scale, block, sq,
                        n_jobs)
            # Rows that overflowed float32 there (queries far beyond the
            # fitted rows) are made as in float64; their squared norm may
            # still be inf, and searches then compare them with every row
            # exactly (see _search._RANKABLE_SQ).
            redo = np.flatnonzero(~np.isfinite(sq))
            if len(redo):
                block[redo], sq[redo] = self._ranking_form64(data[redo])
            return block, sq

        def fill(rows):
            for chunk in gen_batches(rows.stop - rows.start, _ROW_CHUNK):
                chunk = slice(rows.start + chunk.start, rows.start + chunk.stop)
                block[chunk], sq[chunk] = self._ranking_form64(data[chunk])

        in_slices(fill, len(data), n_jobs)
        return block, sq

    def _ranking_form64(self, data):
        """:meth:`_ranking_form` of a few rows, computed in float64."""
        with np.errstate(over="ignore", invalid="ignore"):
            part = data.astype(np.float64)
            if self.metric.name == "cosine":
                part, _ = _unit_rows(part)
            else:
                part -= self.centre
                part *= self.block_scale
            part = part.astype(np.float32)
            return part, np.einsum("ij,ij->i", part, part, dtype=np.float64)

    def unit_raw(self, rows):
        """The rows as learned models see them: unit-normalised for cosine."""
        if self.metric.name != "cosine":
            return rows.data
        return _chunked(rows.data, lambda c: _unit_rows(c.astype(np.float64))[0]
                        ).astype(self.dtype)

    def raw_of_block(self, B):
        """Ranking-form rows (e.g. cluster centres) back in the user's units.

        For cosine they stay unit rows.
        """
        B = np.asarray(B, dtype=np.float64)
        if self.centre is not None:
            B = B / self.block_scale + self.centre
        elif self._routing is not None:  # routing rows of the other metrics
            B = B / self._routing[1] + self._routing[0]
        return B.astype(self.dtype)

    def scaled_rows(self, data):
        """Float32 rows of ``data`` (as :meth:`unit_raw` gives them) in which
        neighbours are those of ``data`` under the metric: the routing rows
        of its ranking form (centred and scaled; for cosine the unit rows,
        cast). What an index of the rows themselves is built on: float32
        casts of the rows as given overflow beyond 3.4e38 and collapse
        offsets."""
        if self.metric.name == "cosine":
            # Unit rows already: normalising again gives the same float32 rows.
            return np.asarray(data, dtype=np.float32)
        return self.routing_rows(self._ranking_form(np.asarray(data, dtype=self.dtype))[0])

    def routing_rows(self, block):
        """Ranking rows ``block`` as partitions and routers see them.

        For the dot-product metrics, the ranking rows themselves (centred and
        scaled). The other metrics rank the data as given, which k-means and
        nearest-centre routing (float32 expanded distances) would see with
        its offset and scale: 1e5 added to digits took
        ``ClusterFilteredKNN(metric='manhattan', router='centroid')``'s recall
        from 0.996 to 0.21, and values ~1e60 or ~1e-60 (beyond float32) put
        every row in one cluster. They get float32 rows centred and scaled
        as the Euclidean ranking rows are, fitted on the fitted rows on
        first use.
        """
        if self.metric.is_dot_product:
            return block
        if self._routing is None:
            self._routing = _centre_and_scale(self.fitted.data)
        centre, scale = self._routing
        out = np.empty(block.shape, dtype=np.float32)
        with np.errstate(over="ignore"):
            for rows in gen_batches(len(block), _ROW_CHUNK):
                out[rows] = (block[rows].astype(np.float64) - centre) * scale
        return out

    # ------------------------------------------------------------- units
    def to_ranking(self, dist):
        """A distance to ranking units (see :meth:`block_values`)."""
        name = self.metric.name
        # Multiplying by the power of two block_scale is exact (or overflows).
        with np.errstate(over="ignore", under="ignore"):
            if name == "euclidean":
                return np.square(np.multiply(dist, self.block_scale))
            if name == "sqeuclidean":
                return np.multiply(np.multiply(dist, self.block_scale), self.block_scale)
        return dist

    # ----------------------------------------------------------- ranking
    def block_values(self, q, x_block, x_sq=None):
        """Ranking values between query :class:`Rows` ``q`` and ranking rows.

        Squared centred distances (Euclidean family, float32), ``1 - cos``
        (cosine, float32) or exact float64 distances (other metrics), each
        monotone in the true distance up to :meth:`error`.
        """
        if not self.metric.is_dot_product:
            return self.metric.cdist(q.block, x_block)
        with np.errstate(over="ignore", invalid="ignore"):
            D = q.block @ x_block.T
            if self.metric.name == "cosine":
                np.subtract(1.0, D, out=D)
                return D
            D *= -2.0
            D += q.sq.astype(np.float32)[:, None]
            D += x_sq.astype(np.float32)[None, :]
        return D

    def error(self, q_sq, x_sq):
        """Bound on ``|block_values - exact|`` for rows of these squared norms."""
        if not self.metric.is_dot_product:
            return 0.0
        return self.tol * (q_sq + x_sq) + self.ABS_SLACK


def inlier_rows(X):
    """Which rows of ``X`` scalings are fitted on: the ranking rows'
    (:class:`Space`), a network's inputs (and it trains on them), a code
    index's centre.

    A row is an outlier where its largest coordinate difference from the
    coordinate-wise median (of up to 2,000 evenly spaced rows) is more than
    ``_OUTLIER_FACTOR`` (100) times that of the median row. One row at 1e8
    among rows 0.004 apart would otherwise set the scale, and the others,
    standardised, would differ by less than float32 resolves (an
    autoencoder's codes then rank nothing: recall 0.06). Returns None where
    every row counts (ordinary data: the same fit as without the check).
    """
    n = len(X)
    centre = np.median(X[:: max(1, n // _MEDIAN_SAMPLE)], axis=0)
    reach = np.empty(n)
    for rows in gen_batches(n, 4096):
        reach[rows] = np.abs(X[rows] - centre).max(axis=1, initial=0.0)
    typical = float(np.median(reach)) if n else 0.0
    inliers = reach <= _OUTLIER_FACTOR * typical
    return None if not typical > 0 or inliers.all() else inliers


def _centre_and_scale(X):
    """The centre and power-of-two scale of the Euclidean ranking rows.

    Fitted on the inliers (:func:`inlier_rows`): one row at 1e8 among rows
    ~1 apart would otherwise pull the mean and set the scale, and the
    others' ranking rows would differ by less than float32 resolves
    (k-means and nearest-centre routing on them then group nothing). The
    scale is lowered where needed so that no fitted row's ranking values
    exceed ``2**_BLOCK_REACH`` (their squares and products stay far from
    float32's range).
    """
    inliers = inlier_rows(X)

    def sums(rows):
        c = X[rows] if inliers is None else X[rows][inliers[rows]]
        return c.sum(axis=0, dtype=np.float64)

    count = len(X) if inliers is None else int(inliers.sum())
    parts = [sums(rows) for rows in gen_batches(len(X), _ROW_CHUNK)]
    centre = (np.stack(parts).sum(axis=0) if parts else np.zeros(X.shape[1])) / max(count, 1)
    spread = _chunked(X, lambda c: np.abs(c - centre).max(initial=0.0, axis=1))
    widest = float(spread.max(initial=0.0))
    scale = _power_of_two_inverse(
        widest if inliers is None else float(spread[inliers].max(initial=0.0)))
    if widest * scale > 2.0**_BLOCK_REACH:
        scale = _power_of_two_inverse(widest) * 2.0**_BLOCK_REACH
    return centre, scale


def _chunked(X, func):
    """``func`` applied to row chunks of ``X``, results concatenated."""
    parts = [np.atleast_1d(func(X[chunk])) for chunk in gen_batches(len(X), _ROW_CHUNK)]
    return np.concatenate(parts) if parts else np.empty(0)


def _power_of_two_inverse(value):
    """``2**-e`` with ``2**e`` close to ``value`` (1 for zero or non-finite).

    The exponent is clamped to +-1000 so the factor stays finite for a
    subnormal spread (rows equal but for their last bits); ranking values
    then tie and the exact recompute decides.
    """
    if not np.isfinite(value) or value <= 0:
        return 1.0
    return float(np.ldexp(1.0, int(np.clip(-np.frexp(value)[1], -1000, 1000))))
