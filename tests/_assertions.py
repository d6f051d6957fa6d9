"""Comparisons of neighbour results that allow for tied distances."""

import numpy as np
from numpy.testing import assert_allclose


def true_distances(metric, Q, X, ind):
    """Distances between each query and its returned rows, from differences.

    (scikit-learn's ``pairwise_distances`` uses the expanded Euclidean
    formula, whose rounding error is larger than what is checked here.)
    """
    from scipy.spatial.distance import cdist

    kw = {}
    if metric.startswith("minkowski"):
        metric, kw = "minkowski", {"p": float(metric.split(":")[1])}
    metric = {"manhattan": "cityblock"}.get(metric, metric)
    return np.array(
        [cdist(Q[i : i + 1], X[ind[i]], metric=metric, **kw)[0] for i in range(len(Q))]
    )


def exact_problem(problem, metric, query_is_train):
    """``(X, Q, k)`` of a drawn search problem, or None where it has no answer.

    For cosine, rows that scikit-learn treats as having no direction (norm
    below its absolute 10 eps, where skknn keeps the direction of any row but
    a row of zeros) are dropped; ``Q`` is None (query the fitted rows, each
    not its own neighbour) when ``query_is_train``.
    """
    X, Q, k = problem
    if metric == "cosine":
        tiny = 10 * np.finfo(np.float64).eps
        X, Q = X[np.linalg.norm(X, axis=1) > tiny], Q[np.linalg.norm(Q, axis=1) > tiny]
        if len(X) < 2 or len(Q) == 0:
            return None
        k = min(k, len(X))
    if query_is_train:
        Q, k = None, min(k, len(X) - 1)
    return X, Q, k


def reference_tolerance(scale):
    """Absolute error of scikit-learn's brute-force distances near zero.

    It uses |a|^2 - 2 a.b + |b|^2, whose rounding error (~eps * scale^2) the
    square root turns into ~sqrt(eps) * scale, with ``scale`` the largest row
    norm. (skknn's own distances come from differences and are exact there.)
    """
    return 4 * np.sqrt(np.finfo(np.float64).eps) * max(scale, 1.0)


def assert_same_neighbors(dist, ind, ref_dist, ref_ind, scale=1.0, names=("skknn", "sklearn")):
    """Distances allclose; indices equal except among tied distances.

    At the largest returned distance of a row, ties with points beyond the
    k-th may be broken differently, so only the groups of strictly smaller
    distances are compared as sets. ``scale`` is the largest row norm.
    """
    msg = f"{names[0]} and {names[1]} disagree"
    atol = reference_tolerance(scale)
    assert_allclose(dist, ref_dist, rtol=1e-7, atol=atol, err_msg=msg)
    for row in range(len(ind)):
        d = ref_dist[row]
        for value in np.unique(d):
            if np.isclose(value, d.max(), rtol=1e-7, atol=atol):
                continue
            group = np.isclose(d, value, rtol=1e-7, atol=atol)
            mine = np.isclose(dist[row], value, rtol=1e-7, atol=atol)
            assert set(ind[row][mine]) == set(ref_ind[row][group]), (
                f"{msg} on row {row} at distance {value}: "
                f"{sorted(ind[row][mine])} vs {sorted(ref_ind[row][group])}"
            )


def recall(ind_dist, ref_dist):
    from skknn._search import recall_at_k

    return recall_at_k(ind_dist, ref_dist)


def assert_same_radius(dist, ind, ref_dist, ref_ind, radius, scale=1.0):
    """Radius results agree, except points within rounding of the radius."""
    tol = reference_tolerance(scale)
    for row in range(len(ind)):
        assert np.all(dist[row] <= radius), f"row {row}: a point beyond the radius"
        mine = set(ind[row])
        sure = set(ref_ind[row][ref_dist[row] < radius - tol])
        borderline = set(ind[row][np.abs(dist[row] - radius) <= tol])
        assert sure <= mine <= set(ref_ind[row]) | borderline, f"radius query, row {row}"


def in_fresh_process(tmp_path, obj, X, expression, check=""):
    """Pickle ``obj``, evaluate ``expression`` (of ``obj`` and ``X``) in a new Python.

    Returns what the expression gave there: an array, or a dict of arrays.
    ``check`` is further code run there afterwards (e.g. an assert).
    """
    import pickle
    import subprocess
    import sys

    (tmp_path / "obj.pkl").write_bytes(pickle.dumps(obj))
    np.save(tmp_path / "X.npy", X)
    out = tmp_path / "out.npz"
    code = (
        "import pickle, sys, numpy as np\n"
        f"obj = pickle.loads(open({str(tmp_path / 'obj.pkl')!r}, 'rb').read())\n"
        f"X = np.load({str(tmp_path / 'X.npy')!r})\n"
        f"result = {expression}\n"
        "result = result if isinstance(result, dict) else {'result': result}\n"
        f"np.savez({str(out)!r}, **result)\n"
        f"{check}\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    loaded = dict(np.load(out))
    return loaded["result"] if list(loaded) == ["result"] else loaded
