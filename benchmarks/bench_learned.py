"""LearnedNeighbors on Fashion-MNIST against its peers, measured in one run.

    python benchmarks/bench_learned.py [--n-train 60000] [--n-queries 10000] [-k 10]

Prints recall@k, queries/s (median of --repeats runs) and fit seconds for
sklearn brute force, pynndescent on raw pixels, hnswlib and faiss (when
installed), and LearnedNeighbors with the autoencoder and with PCA of the same
dimension, each over its effort knob; then the ratios the goals are stated in.
Results also go to --json.
"""

import argparse
import json
import sys
import time
import warnings

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from skknn import AutoencoderEmbedder, LearnedNeighbors
from skknn._search import recall_at_k
from skknn.datasets import load_fashion_mnist


def timed(func, repeats=1):
    times, out = [], None
    for _ in range(repeats):
        tic = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - tic)
    return out, float(np.median(times))


def log(message):
    print(message, file=sys.stderr, flush=True)


def row(results, method, effort, recall, qps, fit_s, **extra):
    results.append({"method": method, "effort": effort, "recall": recall, "qps": qps,
                    "fit_s": fit_s, **extra})
    log(f"  {method:<34} {str(effort):<14} recall={recall:.4f} qps={qps:9.0f} fit={fit_s:7.1f}s")


def exact_distances(X_train, d_true, ind, X_test):
    return np.sqrt(((X_test[:, None, :].astype(np.float64) - X_train[ind]) ** 2).sum(-1))


def bench_learned(results, name, embedder, X_train, X_test, k, true_dist, args, backend):
    nn = LearnedNeighbors(n_neighbors=k, embedder=embedder, backend=backend, random_state=0,
                          n_jobs=-1)
    _, fit_s = timed(lambda: nn.fit(X_train))
    extra = {"recall_at_fit": nn.recall_}
    if hasattr(nn.embedder_, "n_iter_"):
        extra["epochs"] = nn.embedder_.n_iter_
    for c in args.candidates:
        nn.search_params_ = {"candidates_per_neighbor": c}
        (dist, _), t = timed(lambda: nn.kneighbors(X_test), args.repeats)
        row(results, f"{name} [{backend}]", f"cand/k={c}", recall_at_k(dist, true_dist),
            len(X_test) / t, fit_s, **extra)
    return nn


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=60000)
    parser.add_argument("--n-queries", type=int, default=10000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8, 12, 16])
    parser.add_argument("--backends", nargs="+", default=["brute", "pynndescent"])
    parser.add_argument("--skip", nargs="*", default=[], help="peers to skip")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    X_train, _, X_test, _ = load_fashion_mnist()
    X_train, X_test = X_train[: args.n_train], X_test[: args.n_queries]
    k, results = args.k, []
    log(f"Fashion-MNIST {X_train.shape[0]} train x {X_test.shape[0]} queries, k={k}")

    exact = NearestNeighbors(n_neighbors=k, algorithm="brute")
    _, fit_s = timed(lambda: exact.fit(X_train))
    (true_dist, true_ind), t = timed(lambda: exact.kneighbors(X_test), 1)
    # Accurate reference distances (sklearn's come from the expanded formula).
    true_dist = exact_distances(X_train, true_dist, true_ind, X_test)
    row(results, "sklearn NearestNeighbors (brute)", "exact", 1.0, len(X_test) / t, fit_s)
    brute_qps = len(X_test) / t

    if "pynndescent" not in args.skip:
        from pynndescent import NNDescent

        _, compile_s = timed(lambda: NNDescent(X_train[:2000], random_state=0).prepare())
        def build():
            index = NNDescent(X_train, random_state=0, n_jobs=-1)
            index.prepare()
            return index

        index, fit_s = timed(build)
        for eps in (0.0, 0.05, 0.1, 0.2, 0.3):
            (ind, dist), t = timed(lambda eps=eps: index.query(X_test, k=k, epsilon=eps),
                                   args.repeats)
            d = exact_distances(X_train, None, ind, X_test)
            row(results, "pynndescent (raw pixels)", f"eps={eps}", recall_at_k(d, true_dist),
                len(X_test) / t, fit_s, compile_s=compile_s)

    if "hnswlib" not in args.skip:
        try:
            import hnswlib
        except ImportError:
            log("  hnswlib not installed: skipped")
        else:
            index = hnswlib.Index(space="l2", dim=X_train.shape[1])

            def build():
                index.init_index(max_elements=len(X_train), ef_construction=200, M=16,
                                 random_seed=0)
                index.add_items(X_train)

            _, fit_s = timed(build)
            for ef in (10, 20, 40, 80, 160):
                index.set_ef(ef)
                (ind, _), t = timed(lambda: index.knn_query(X_test, k=k), args.repeats)
                d = exact_distances(X_train, None, ind.astype(np.intp), X_test)
                row(results, "hnswlib (raw pixels)", f"ef={ef}", recall_at_k(d, true_dist),
                    len(X_test) / t, fit_s)

    if "faiss" not in args.skip:
        try:
            import faiss
        except ImportError:
            log("  faiss not installed: skipped")
        else:
            nlist = int(4 * np.sqrt(len(X_train)))
            quantizer = faiss.IndexFlatL2(X_train.shape[1])
            ivf = faiss.IndexIVFFlat(quantizer, X_train.shape[1], nlist)

            def build():
                ivf.train(X_train)
                ivf.add(X_train)

            _, fit_s = timed(build)
            for nprobe in (1, 2, 4, 8, 16, 32):
                ivf.nprobe = nprobe
                (_, ind), t = timed(lambda: ivf.search(X_test, k), args.repeats)
                d = exact_distances(X_train, None, ind.astype(np.intp), X_test)
                row(results, f"faiss IVF-Flat (nlist={nlist})", f"nprobe={nprobe}",
                    recall_at_k(d, true_dist), len(X_test) / t, fit_s)

    dim = 32
    for backend in args.backends:
        ae = AutoencoderEmbedder(n_components=dim, epochs=args.epochs, random_state=0,
                                 verbose=1)
        bench_learned(results, f"LearnedNeighbors AE-{dim}", ae, X_train, X_test, k,
                      true_dist, args, backend)
        bench_learned(results, f"LearnedNeighbors PCA-{dim}", PCA(dim, random_state=0),
                      X_train, X_test, k, true_dist, args, backend)

    print(summary(results, brute_qps))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


def summary(results, brute_qps, target=0.95):
    lines = [f"{'method':<40}{'effort':<14}{'recall':>8}{'qps':>10}{'x brute':>9}{'fit s':>8}"]
    for r in results:
        lines.append(f"{r['method']:<40}{r['effort']:<14}{r['recall']:>8.4f}{r['qps']:>10.0f}"
                     f"{r['qps'] / brute_qps:>9.1f}{r['fit_s']:>8.1f}")
    lines.append(f"\nbest queries/s at recall >= {target}:")
    for method in dict.fromkeys(r["method"] for r in results):
        ok = [r for r in results if r["method"] == method and r["recall"] >= target]
        if ok:
            best = max(ok, key=lambda r: r["qps"])
            lines.append(f"  {method:<40}{best['qps']:>10.0f} ({best['effort']}, "
                         f"recall {best['recall']:.4f}, {best['qps'] / brute_qps:.1f}x brute)")
        else:
            lines.append(f"  {method:<40}    never reached")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
