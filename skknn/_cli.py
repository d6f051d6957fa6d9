"""``python -m skknn``: recall against speed of skknn's searches and exact search."""

import argparse
import json
import sys
import time
import warnings

import numpy as np
from sklearn.utils import gen_batches

from ._metrics import Metric
from ._search import recall_at_k

_DEFAULT_QUERIES = {"digits": 300, "fashion-mnist": 10000}


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m skknn",
        description=(
            "Compare skknn's neighbour searches with exact NearestNeighbors: recall@k, "
            "queries per second, fit seconds and speed-up over brute force."
        ),
    )
    parser.add_argument("--dataset", choices=sorted(_DEFAULT_QUERIES), default="digits",
                        help="data set (default: scikit-learn's bundled digits)")
    parser.add_argument("--data-dir", help="folder with the Fashion-MNIST idx files")
    parser.add_argument("-k", type=_positive_int, default=10, help="neighbours (default 10)")
    parser.add_argument("--n-queries", type=_positive_int,
                        help="queries (default 300 for digits, 10000 for fashion-mnist)")
    parser.add_argument("--target-recall", type=float, default=0.95,
                        help="target_recall of the learned searches (default 0.95)")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    return parser


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _load(args):
    if args.dataset == "digits":
        from sklearn.datasets import load_digits

        X = load_digits().data.astype(np.float32)
        n_queries = args.n_queries or _DEFAULT_QUERIES["digits"]
        if n_queries >= len(X) - args.k:
            raise ValueError(
                f"--n-queries {n_queries} leaves too few of digits' {len(X)} samples to search."
            )
        perm = np.random.RandomState(args.random_state).permutation(len(X))
        return X[perm[n_queries:]], X[perm[:n_queries]]
    from .datasets import load_fashion_mnist

    X_train, _, X_test, _ = load_fashion_mnist(args.data_dir)
    return X_train, X_test[: args.n_queries or _DEFAULT_QUERIES["fashion-mnist"]]


def _estimators(args, n_features):
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    from . import AutoencoderEmbedder, ClusterFilteredKNN, LearnedNeighbors

    dim = min(32, n_features)
    common = {"n_neighbors": args.k, "target_recall": args.target_recall,
              "random_state": args.random_state}
    return [
        ("NearestNeighbors (exact, brute)",
         NearestNeighbors(n_neighbors=args.k, algorithm="brute")),
        (f"LearnedNeighbors (autoencoder-{dim})",
         LearnedNeighbors(embedder=AutoencoderEmbedder(n_components=dim,
                                                       random_state=args.random_state), **common)),
        (f"LearnedNeighbors (PCA-{dim})", LearnedNeighbors(embedder=PCA(dim), **common)),
        ("ClusterFilteredKNN (mlp router)", ClusterFilteredKNN(router="mlp", **common)),
        ("ClusterFilteredKNN (centroid router)", ClusterFilteredKNN(router="centroid", **common)),
    ]


def _measure(name, estimator, X_train, X_test, k, true_dist, log):
    log(f"fitting {name} on {X_train.shape[0]} x {X_train.shape[1]} ...")
    tic = time.perf_counter()
    estimator.fit(X_train)
    fit_s = time.perf_counter() - tic
    times = []
    for _ in range(3):
        tic = time.perf_counter()
        dist, ind = estimator.kneighbors(X_test)
        times.append(time.perf_counter() - tic)
    if true_dist is None:
        # The reference: exact neighbours with distances computed from
        # differences in float64 (the brute-force ones carry rounding error).
        dist = np.vstack([
            Metric("euclidean").paired(X_test[s, None, :].astype(np.float64), X_train[ind[s]])
            for s in gen_batches(len(X_test), 1000)
        ])
    return {
        "method": name,
        "recall": 1.0 if true_dist is None else recall_at_k(dist, true_dist),
        "qps": len(X_test) / float(np.median(times)),
        "fit_s": fit_s,
        "effort": getattr(estimator, "search_params_", "exact"),
        "dist": dist,
    }


def _table(results, k):
    brute = results[0]["qps"]
    head = (f"{'method':<38}{'recall@' + str(k):>10}{'queries/s':>12}{'speed-up':>10}"
            f"{'fit s':>8}  effort")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['method']:<38}{r['recall']:>10.3f}{r['qps']:>12,.0f}{r['qps'] / brute:>9.2f}x"
            f"{r['fit_s']:>8.2f}  {r['effort']}"
        )
    if max(r["qps"] for r in results[1:]) < brute:
        lines.append(
            "\nAt this size exact brute force is fastest: approximate search pays off on "
            "larger data,\ne.g. python -m skknn --dataset fashion-mnist."
        )
    return "\n".join(lines)


def main(argv=None):
    """Run the comparison; returns the process exit code."""
    args = _parser().parse_args(argv)
    if not 0 < args.target_recall <= 1:
        _parser().error(f"--target-recall must be in (0, 1], got {args.target_recall}")

    def log(message):
        print(f"[skknn] {message}", file=sys.stderr, flush=True)

    try:
        X_train, X_test = _load(args)
    except (OSError, ValueError) as exc:
        print(f"python -m skknn: error: {exc}", file=sys.stderr)
        return 1
    log(f"{args.dataset}: {len(X_train)} indexed points, {len(X_test)} queries, k={args.k}")
    results, true_dist = [], None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, estimator in _estimators(args, X_train.shape[1]):
            result = _measure(name, estimator, X_train, X_test, args.k, true_dist, log)
            if true_dist is None:
                true_dist = result["dist"]
            results.append(result)
    for r in results:
        del r["dist"]
    if args.json:
        print(json.dumps({"dataset": args.dataset, "k": args.k, "n_train": len(X_train),
                          "n_queries": len(X_test), "results": results}, indent=1))
    else:
        print(_table(results, args.k))
    return 0
