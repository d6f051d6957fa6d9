"""ClusterFilteredKNN on Fashion-MNIST: learned router vs centroid routing vs faiss IVF.

    python benchmarks/bench_cluster.py [--n-clusters N] [--json FILE]

One fit partitions the data; the same clusters are then searched with the
'mlp' router and with centroid routing (the router swapped on a copy), and
faiss IndexIVFFlat gets the same number of lists. For each n_probe: recall@k,
mean candidates per query (sum of probed cluster sizes) and queries/s (median
of --repeats). Then the candidates each router needs at recall 0.90 and the
queries/s at recall 0.95, interpolated between measured points.
"""

import argparse
import copy
import json
import sys
import time
import warnings

import numpy as np

from skknn import ClusterFilteredKNN
from skknn._metrics import Metric
from skknn._search import exact_search, recall_at_k
from skknn.datasets import load_fashion_mnist

PROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def log(message):
    print(message, file=sys.stderr, flush=True)


def median_time(func, repeats):
    times, out = [], None
    for _ in range(repeats):
        tic = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - tic)
    return out, float(np.median(times))


def at_recall(rows, target, key):
    """``key`` interpolated at ``recall == target`` along a sweep (None if never)."""
    rows = sorted(rows, key=lambda r: r["recall"])
    for lo, hi in zip(rows, rows[1:]):
        if lo["recall"] <= target <= hi["recall"]:
            w = (target - lo["recall"]) / max(hi["recall"] - lo["recall"], 1e-12)
            return lo[key] + w * (hi[key] - lo[key])
    return rows[0][key] if rows and rows[0]["recall"] >= target else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=60000)
    parser.add_argument("--n-queries", type=int, default=10000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--n-clusters", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--label-neighbors", type=int, default=10)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    X_train, _, X_test, _ = load_fashion_mnist()
    X_train, X_test = X_train[: args.n_train], X_test[: args.n_queries]
    k = args.k
    true_dist, _ = exact_search(X_train, X_test, k, n_jobs=-1)

    nn = ClusterFilteredKNN(
        n_neighbors=k, n_clusters=args.n_clusters, router="mlp", epochs=args.epochs,
        n_label_neighbors=args.label_neighbors, hidden_layer_sizes=tuple(args.hidden),
        random_state=0, n_jobs=-1, verbose=1,
    )
    _, fit_s = median_time(lambda: nn.fit(X_train), 1)
    n_clusters = nn.n_clusters_
    log(f"{n_clusters} clusters, fit {fit_s:.1f} s (router epochs: {nn.n_iter_})")
    centroid = copy.copy(nn)
    centroid._router = None  # the same clusters, routed by nearest centre

    results = []
    for name, est in (("mlp router", nn), ("centroid router", centroid)):
        for n_probe in [n for n in PROBES if n <= n_clusters]:
            est.search_params_ = {"n_probe": n_probe}
            (dist, _), t = median_time(lambda est=est: est.kneighbors(X_test), args.repeats)
            row = {"method": name, "n_probe": n_probe, "recall": recall_at_k(dist, true_dist),
                   "candidates": est.mean_candidates(X_test, n_probe),
                   "qps": len(X_test) / t, "fit_s": fit_s}
            results.append(row)
            log(f"  {name:<18} n_probe={n_probe:<3} recall={row['recall']:.4f} "
                f"candidates={row['candidates']:8.0f} qps={row['qps']:8.0f}")

    try:
        import faiss
    except ImportError:
        log("  faiss not installed: skipped")
    else:
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(X_train.shape[1]), X_train.shape[1],
                                 n_clusters)
        _, faiss_fit = median_time(lambda: (ivf.train(X_train), ivf.add(X_train)), 1)
        sizes = np.array([ivf.invlists.list_size(i) for i in range(n_clusters)])
        for n_probe in [n for n in PROBES if n <= n_clusters]:
            ivf.nprobe = n_probe
            (_, ind), t = median_time(lambda: ivf.search(X_test, k), args.repeats)
            dist = Metric("euclidean").paired(X_test[:, None, :].astype(np.float64),
                                             X_train[ind])
            _, lists = ivf.quantizer.search(X_test, n_probe)
            row = {"method": "faiss IVF-Flat", "n_probe": n_probe,
                   "recall": recall_at_k(np.sort(dist, 1), true_dist),
                   "candidates": float(sizes[lists].sum(1).mean()),
                   "qps": len(X_test) / t, "fit_s": faiss_fit}
            results.append(row)
            log(f"  {'faiss IVF-Flat':<18} n_probe={n_probe:<3} recall={row['recall']:.4f} "
                f"candidates={row['candidates']:8.0f} qps={row['qps']:8.0f}")

    lines = [f"Fashion-MNIST {len(X_train)} x {len(X_test)} queries, k={k}, "
             f"{n_clusters} clusters"]
    by = {m: [r for r in results if r["method"] == m] for m in dict.fromkeys(
        r["method"] for r in results)}
    for method, rows in by.items():
        c90 = at_recall(rows, 0.90, "candidates")
        q95 = at_recall(rows, 0.95, "qps")
        lines.append(f"  {method:<18} candidates at recall 0.90: "
                     f"{'never' if c90 is None else f'{c90:8.0f}'}   queries/s at recall 0.95: "
                     f"{'never' if q95 is None else f'{q95:8.0f}'}")
    if "mlp router" in by and "centroid router" in by:
        a = at_recall(by["mlp router"], 0.90, "candidates")
        b = at_recall(by["centroid router"], 0.90, "candidates")
        if a and b:
            lines.append(f"  mlp / centroid candidates at recall 0.90: {a / b:.3f} (goal <= 0.67)")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
