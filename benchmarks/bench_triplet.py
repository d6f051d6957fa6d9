"""TripletEmbedder on Fashion-MNIST: 5-NN test accuracy against its baselines.

    python benchmarks/bench_triplet.py [--seeds 0 1 2] [--ablation] [--nca-subset 5000]
                                       [--json FILE]

In one run: 5-NN accuracy on the 10k test images with raw pixels, PCA-32 and
TripletEmbedder-32 trained on all 60k (defaults once per seed; the other miners
with seed 0; with --ablation also batch_norm=False and/or
learning_rate_schedule='constant' per seed), and, on the first --nca-subset
training images, raw pixels, PCA-32, TripletEmbedder-32 and sklearn's
NeighborhoodComponentsAnalysis-32 (its cost grows with the square of the
training size). Fit seconds for each, then the median per setting.
"""

import argparse
import json
import time
import warnings
from collections import defaultdict

import numpy as np
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
                 "subset": subset,
                 "epochs": getattr(embedder, "n_iter_", None)})
    print(f"{name:<34} train={len(X):>6}  5-NN accuracy={acc:.4f}  fit={fit_s:7.1f}s",
          flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nca-subset", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--miners", nargs="+", default=["batch_hard", "batch_all"],
                        help="miners besides the default semi_hard (seed 0 only)")
    parser.add_argument("--ablation", action="store_true",
                        help="also without batch norm and/or the adaptive schedule, per seed")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    X, y, X_test, y_test = load_fashion_mnist()
    rows = []
    settings = {"defaults": {}}
    if args.ablation:
        settings.update({
            "batch_norm=False": {"batch_norm": False},
            "constant schedule": {"learning_rate_schedule": "constant"},
            "neither": {"batch_norm": False, "learning_rate_schedule": "constant"},
        })
    triplets = [(f"TripletEmbedder-32 ({label}, seed {seed})",
                 lambda kw=kw, seed=seed: TripletEmbedder(32, random_state=seed, **kw))
                for label, kw in settings.items() for seed in args.seeds]
    triplets += [(f"TripletEmbedder-32 ({m}, seed 0)",
                  lambda m=m: TripletEmbedder(32, miner=m, random_state=0)) for m in args.miners]
    baselines = [("raw pixels", None), ("PCA-32", lambda: PCA(32, random_state=0))]
    for name, make in baselines + triplets:
        evaluate(name, make, X, y, X_test, y_test, False, rows)
    n = args.nca_subset
    nca = ("NCA-32", lambda: NeighborhoodComponentsAnalysis(32, random_state=0, max_iter=50))
    for name, make in baselines + triplets[:1] + [nca]:
        evaluate(name, make, X[:n], y[:n], X_test, y_test, True, rows)
    summary = defaultdict(list)
    for row in rows:
        if not row["subset"] and row["method"].startswith("TripletEmbedder"):
            summary[row["method"].rsplit(", seed", 1)[0] + ")"].append(row)
    print("\nmedian over seeds (all 60k):")
    for name, group in summary.items():
        acc = [r["accuracy"] for r in group]
        print(f"{name:<48} n={len(group)}  accuracy median={np.median(acc):.4f} "
              f"min={min(acc):.4f} max={max(acc):.4f}  "
              f"fit median={np.median([r['fit_s'] for r in group]):.1f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
