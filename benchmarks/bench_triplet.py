"""TripletEmbedder on Fashion-MNIST: 5-NN test accuracy against its baselines.

    python benchmarks/bench_triplet.py [--nca-subset 5000] [--json FILE]

In one run: 5-NN accuracy on the 10k test images with raw pixels, PCA-32,
TripletEmbedder-32 (one row per miner) trained on all 60k, and, on the first
--nca-subset training images, the same methods plus sklearn's
NeighborhoodComponentsAnalysis-32 (its cost grows with the square of the
training size). Fit seconds for each.
"""

import argparse
import json
import time
import warnings

from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier, NeighborhoodComponentsAnalysis

from skknn import TripletEmbedder
from skknn.datasets import load_fashion_mnist


def evaluate(name, make, X, y, X_test, y_test, subset, rows):
    tic = time.perf_counter()
    embedder = make().fit(X, y) if make is not None else None
    fit_s = time.perf_counter() - tic
    Z, Z_test = (X, X_test) if embedder is None else (embedder.transform(X),
                                                       embedder.transform(X_test))
    acc = KNeighborsClassifier(5, n_jobs=-1).fit(Z, y).score(Z_test, y_test)
    rows.append({"method": name, "train": len(X), "accuracy": acc, "fit_s": fit_s,
                 "subset": subset})
    print(f"{name:<34} train={len(X):>6}  5-NN accuracy={acc:.4f}  fit={fit_s:7.1f}s",
          flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nca-subset", type=int, default=5000)
    parser.add_argument("--miners", nargs="+", default=["batch_hard", "batch_all"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    X, y, X_test, y_test = load_fashion_mnist()
    rows = []
    triplets = [(f"TripletEmbedder-32 ({m})",
                 lambda m=m: TripletEmbedder(32, miner=m, random_state=0)) for m in args.miners]
    methods = [("raw pixels", None), ("PCA-32", lambda: PCA(32, random_state=0))] + triplets
    for name, make in methods:
        evaluate(name, make, X, y, X_test, y_test, False, rows)
    n = args.nca_subset
    nca = ("NCA-32", lambda: NeighborhoodComponentsAnalysis(32, random_state=0, max_iter=50))
    for name, make in methods + [nca]:
        evaluate(name, make, X[:n], y[:n], X_test, y_test, True, rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
