"""The methods ``python -m skknn`` compares, each with its search-effort knob.

Every method is fitted once, then queried at each setting of its effort knob
(``candidates_per_neighbor`` or ``n_probe`` for skknn, ``epsilon``, ``ef`` or
``nprobe`` for the peers), which gives one recall/speed curve per method.
Peers (pynndescent, hnswlib, faiss) are used when installed.
"""

import copy
import math
import time

import numpy as np
from sklearn.utils import gen_batches

from ._metrics import Metric
from ._search import recall_at_k

_EUCLIDEAN = Metric("euclidean")
# A sweep stops once its recall reaches this: more effort only costs speed.
_SWEEP_STOP_RECALL = 0.999
_TIMING_REPEATS = 3
_WARM_UP_QUERIES = 200


class _Method:
    """One search method: ``fit``, ``query`` and its effort settings."""

    #: (module to import, pip package) it needs, or None for skknn's own.
    requires = None

    def __init__(self, key, name):
        self.key, self.name = key, name

    def available(self):
        if self.requires is None:
            return True
        try:
            __import__(self.requires[0])
        except ImportError:
            return False
        return True

    def efforts(self):
        """Effort settings in increasing order (each a dict shown to the user)."""
        return [None]

    def operating_point(self):
        """The setting the table reports, or None for 'fastest reaching the target'."""
        return None


class _SkknnMethod(_Method):
    def __init__(self, key, name, make, requires=None):
        super().__init__(key, name)
        self._make = make
        self.requires = requires

    def fit(self, X, args):
        self.estimator = self._make(args, X.shape[1]).fit(X)

    def efforts(self):
        if not hasattr(self.estimator, "search_params_"):
            return [None]
        return [dict(e) for e in self.estimator._search_efforts()]

    def operating_point(self):
        return dict(getattr(self.estimator, "search_params_", None) or {}) or None

    def query(self, Q, k, effort):
        est = self.estimator
        if effort is not None:
            # search_params_ is the effort in use; setting it changes the
            # search without refitting.
            est = copy.copy(est)
            est.search_params_ = effort
        return est.kneighbors(Q, k, return_distance=False)


class _PyNNDescent(_Method):
    requires = ("pynndescent", "pynndescent")

    def fit(self, X, args):
        from pynndescent import NNDescent

        self.index = NNDescent(X, n_neighbors=30, random_state=args.random_state)
        self.index.prepare()

    def efforts(self):
        return [{"epsilon": e} for e in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)]

    def query(self, Q, k, effort):
        return self.index.query(Q, k, epsilon=effort["epsilon"])[0]


class _Hnswlib(_Method):
    requires = ("hnswlib", "hnswlib")

    def fit(self, X, args):
        import hnswlib

        self.index = hnswlib.Index(space="l2", dim=X.shape[1])
        self.index.init_index(max_elements=len(X), ef_construction=200, M=16,
                              random_seed=args.random_state)
        self.index.add_items(X, np.arange(len(X)))

    def efforts(self):
        return [{"ef": ef} for ef in (10, 12, 15, 20, 25, 30, 40, 60, 80, 100, 120, 160, 200,
                                       240, 320)]

    def query(self, Q, k, effort):
        self.index.set_ef(max(effort["ef"], k))
        return self.index.knn_query(Q, k)[0].astype(np.intp)


class _FaissIVF(_Method):
    requires = ("faiss", "faiss-cpu")

    def fit(self, X, args):
        import faiss

        # The usual 4 sqrt(n) lists, but at least 39 training points per list
        # (faiss's own minimum).
        self.nlist = max(1, min(round(4 * math.sqrt(len(X))), len(X) // 39))
        X = np.ascontiguousarray(X, dtype=np.float32)
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(X.shape[1]), X.shape[1], self.nlist)
        self.index.cp.seed = args.random_state
        self.index.train(X)
        self.index.add(X)

    def efforts(self):
        grid = [n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n < self.nlist]
        return [{"nprobe": n} for n in grid + [self.nlist]]

    def query(self, Q, k, effort):
        self.index.nprobe = effort["nprobe"]
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        return self.index.search(Q, k)[1].astype(np.intp)


def _exact(args, n_features):
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=args.k, algorithm="brute")


def _learned(embedder, backend="auto"):
    def make(args, n_features):
        from sklearn.decomposition import PCA

        from . import AutoencoderEmbedder, LearnedNeighbors

        dim = min(32, n_features)
        emb = (AutoencoderEmbedder(n_components=dim, random_state=args.random_state)
               if embedder == "autoencoder" else PCA(dim, random_state=args.random_state))
        return LearnedNeighbors(embedder=emb, backend=backend, n_neighbors=args.k,
                                target_recall=args.target_recall,
                                random_state=args.random_state)

    return make


def _learned_defaults(args, n_features):
    from . import LearnedNeighbors

    return LearnedNeighbors(n_neighbors=args.k, target_recall=args.target_recall,
                            random_state=args.random_state)


def _cluster(router):
    def make(args, n_features):
        from . import ClusterFilteredKNN

        return ClusterFilteredKNN(router=router, n_neighbors=args.k,
                                  target_recall=args.target_recall,
                                  random_state=args.random_state)

    return make


def methods():
    """Every method, by key: exact search first (the reference)."""
    return {
        "exact": _SkknnMethod("exact", "NearestNeighbors (exact, brute)", _exact),
        "learned": _SkknnMethod("learned", "LearnedNeighbors (defaults)", _learned_defaults),
        "learned-ae": _SkknnMethod("learned-ae", "LearnedNeighbors (autoencoder)",
                                   _learned("autoencoder")),
        "learned-ae-nnd": _SkknnMethod(
            "learned-ae-nnd", "LearnedNeighbors (autoencoder, pynndescent)",
            _learned("autoencoder", "pynndescent"),
        ),
        "learned-ae-hnsw": _SkknnMethod(
            "learned-ae-hnsw", "LearnedNeighbors (autoencoder, hnswlib)",
            _learned("autoencoder", "hnswlib"), requires=("hnswlib", "hnswlib"),
        ),
        "learned-pca": _SkknnMethod("learned-pca", "LearnedNeighbors (PCA)", _learned("pca")),
        "cluster-mlp": _SkknnMethod("cluster-mlp", "ClusterFilteredKNN (mlp router)",
                                    _cluster("mlp")),
        "cluster-centroid": _SkknnMethod("cluster-centroid",
                                         "ClusterFilteredKNN (centroid router)",
                                         _cluster("centroid")),
        "pynndescent": _PyNNDescent("pynndescent", "pynndescent (raw data)"),
        "hnswlib": _Hnswlib("hnswlib", "hnswlib HNSW (M=16)"),
        "faiss-ivf": _FaissIVF("faiss-ivf", "faiss IVF-Flat"),
    }


def true_distances(X_train, X_test, ind):
    """Euclidean distances of the returned neighbours, from differences, in float64.

    Missing neighbours (index -1) are at infinity, so they never count as found.
    """
    out = np.empty(ind.shape)
    for s in gen_batches(len(X_test), 1000):
        rows = ind[s]
        d = _EUCLIDEAN.paired(X_test[s, None, :].astype(np.float64),
                              X_train[np.maximum(rows, 0)])
        out[s] = np.where(rows < 0, np.inf, d)
    return np.sort(out, axis=1)


def _timed_query(method, X_test, k, effort):
    times, ind = [], None
    for _ in range(_TIMING_REPEATS):
        tic = time.perf_counter()
        ind = method.query(X_test, k, effort)
        times.append(time.perf_counter() - tic)
    return ind, len(X_test) / float(np.median(times))


def measure(method, args, X_train, X_test, reference, log):
    """Fit ``method`` and query it at each effort; ``reference`` = exact distances.

    Returns a dict with ``fit_s``, ``curve`` (points: effort, recall@k,
    queries/s; a sweep stops once recall reaches 0.999) and, for skknn
    estimators and exact search, ``fitted`` (the point at the effort ``fit``
    chose). With ``reference=None`` the method is taken as exact and its own
    distances become the reference (``result['dist']``).
    """
    k = args.k
    tic = time.perf_counter()
    method.fit(X_train, args)
    fit_s = time.perf_counter() - tic
    log(f"  fitted in {fit_s:.1f} s; querying {len(X_test)} points ...")
    result = {"method": method.name, "key": method.key, "fit_s": fit_s, "curve": []}
    fitted = method.operating_point()

    def run(effort):
        ind, qps = _timed_query(method, X_test, k, effort)
        dist = true_distances(X_train, X_test, ind)
        if reference is None:
            result["dist"], recall = dist, 1.0
        else:
            recall = recall_at_k(dist, reference)
        point = {"effort": effort, "recall": recall, "qps": qps}
        result["curve"].append(point)
        if effort == fitted:
            result["fitted"] = point
        if effort is not None:
            log(f"    {effort}: recall@{k}={recall:.3f}, {qps:,.0f} queries/s")
        return point

    efforts = method.efforts()
    # One untimed call first: lazy imports and compiled kernels load on first use.
    method.query(X_test[:_WARM_UP_QUERIES], k, efforts[0])
    for effort in efforts:
        if run(effort)["recall"] >= _SWEEP_STOP_RECALL:
            break
    if "fitted" not in result and (fitted is not None or method.requires is None):
        run(fitted)
    result["curve"].sort(key=lambda p: (p["recall"], p["qps"]))
    return result


def table_point(result, target_recall):
    """The point the table reports for a method, and how it was chosen.

    skknn estimators: the effort ``fit`` picked for ``target_recall`` (tuned
    on held-out training points). Peers: the fastest swept setting reaching
    ``target_recall`` on the queries themselves (or the most accurate one).
    """
    if "fitted" in result:
        return result["fitted"], "fit"
    reaching = [p for p in result["curve"] if p["recall"] >= target_recall]
    if reaching:
        return max(reaching, key=lambda p: p["qps"]), "sweep"
    return max(result["curve"], key=lambda p: (p["recall"], p["qps"])), "sweep"


def plot(results, path, title):
    """Recall against queries/s, one curve per method; saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for r in results:
        curve = sorted(r["curve"], key=lambda p: p["recall"])
        recall = [p["recall"] for p in curve]
        qps = [p["qps"] for p in curve]
        style = "*" if len(curve) == 1 else "o-"
        ax.plot(recall, qps, style, label=r["method"], markersize=9 if len(curve) == 1 else 4)
    ax.set_yscale("log")
    ax.set_xlabel("recall@k")
    ax.set_ylabel("queries per second (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
