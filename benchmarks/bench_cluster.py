"""ClusterFilteredKNN: the learned router vs centroid routing vs faiss IVF-Flat.

    python benchmarks/bench_cluster.py [--dataset fashion-mnist|embedding-like]
        [--n-clusters N] [--repeats 3] [--alternate 9] [--json FILE]

Three indexes with the same number of clusters (lists), on the same data:

* ``ClusterFilteredKNN()`` -- the defaults: METIS parts of the k-NN graph,
  the 'mlp' router, probing by probability mass (swept over ``probe_mass``);
* ``ClusterFilteredKNN(router='centroid')`` -- k-means cells, nearest
  centres (swept over ``n_probe``): the plain inverted file;
* faiss ``IndexIVFFlat`` (swept over ``nprobe``), where installed.

For each setting: recall@k against exact search, mean candidates per query
(sum of the probed clusters' sizes), queries/s of ``kneighbors`` (median of
--repeats), and for ours the time of routing alone (``route``) and of the
search alone (``search_clusters`` on those routes), per 10k queries. Then
the candidates each needs at recall 0.90 and the queries/s at recall 0.95,
interpolated between measured settings, and their ratios. Last, the two
settings around recall 0.95 of both of ours are timed again in --alternate
rounds, one call of each per round (a slow spell of this shared machine then
hits both alike), and their q/s ratio at 0.95 is printed from the medians.
"""

import argparse
import json
import sys
import time
import warnings

import numpy as np

from skknn import ClusterFilteredKNN
from skknn._compare import true_distances
from skknn._search import exact_search, recall_at_k

MASSES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
PROBES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48)
# Sweeps stop at this recall.
STOP_AT = 0.999
# The embedding-like set of benchmarks/bench_learned.py (python -m skknn).
EMBEDDING_TRAIN, EMBEDDING_QUERIES = 100_000, 10_000


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


def load(name):
    if name == "fashion-mnist":
        from skknn.datasets import load_fashion_mnist

        X, _, Q, _ = load_fashion_mnist()
        return X, Q
    from skknn.datasets import make_embedding_like

    X, _ = make_embedding_like(EMBEDDING_TRAIN + EMBEDDING_QUERIES, random_state=0)
    return X[:EMBEDDING_TRAIN], X[EMBEDDING_TRAIN:]


def sweep_ours(name, nn, X_train, X_test, true_dist, efforts, repeats, fit_s):
    rows = []
    per_10k = 1e4 / len(X_test)
    for params in efforts:
        nn.search_params_ = params
        (_, ind), t = median_time(lambda: nn.kneighbors(X_test), repeats)
        dist = true_distances(X_train, X_test, ind)
        probes, t_route = median_time(lambda: nn.route(X_test), repeats)
        _, t_scan = median_time(lambda p=probes: nn.search_clusters(X_test, p), repeats)
        sizes = np.bincount(nn.labels_, minlength=nn.n_clusters_)
        candidates = np.where(probes >= 0, sizes[np.maximum(probes, 0)], 0).sum(1).mean()
        row = {"method": name, "effort": params, "recall": recall_at_k(dist, true_dist),
               "candidates": float(candidates), "qps": len(X_test) / t,
               "route_ms_per_10k": 1e3 * t_route * per_10k,
               "search_ms_per_10k": 1e3 * t_scan * per_10k, "fit_s": fit_s}
        rows.append(row)
        log(f"  {name:<22} {str(params):<22} recall={row['recall']:.4f} "
            f"candidates={row['candidates']:7.0f} qps={row['qps']:8.0f} "
            f"route={row['route_ms_per_10k']:6.1f} ms search={row['search_ms_per_10k']:6.1f} ms"
            f" (per 10k)")
        if row["recall"] >= STOP_AT:
            break
    return rows


def alternate_at_recall(fitted, results, X_test, target, rounds):
    """q/s at ``target`` of each fitted estimator, from the two settings around
    it, timed in alternating rounds (one call of each setting per round)."""
    plan = []
    for method, nn in fitted.items():
        rows = [r for r in results if r["method"] == method]
        around = [(lo, hi) for lo, hi in zip(rows, rows[1:])
                  if lo["recall"] < target <= hi["recall"]]
        plan += [(method, nn, row) for row in (around[0] if around else rows[:1])]
    times = [[] for _ in plan]
    for _ in range(rounds):
        for (_, nn, row), spent in zip(plan, times):
            nn.search_params_ = row["effort"]
            tic = time.perf_counter()
            nn.kneighbors(X_test)
            spent.append(time.perf_counter() - tic)
    out = {}
    for method in fitted:
        rows = [dict(row, qps=len(X_test) / float(np.median(spent)))
                for (m, _, row), spent in zip(plan, times) if m == method]
        out[method] = at_recall(rows, target, "qps")
        log(f"  alternating: {method} " + ", ".join(
            f"{r['effort']} recall={r['recall']:.4f} qps={r['qps']:.0f}" for r in rows))
    return out


def sweep_faiss(X_train, X_test, true_dist, k, n_lists, repeats):
    try:
        import faiss
    except ImportError:
        log("  faiss not installed: skipped")
        return []
    X32 = np.ascontiguousarray(X_train, dtype=np.float32)
    Q32 = np.ascontiguousarray(X_test, dtype=np.float32)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(X32.shape[1]), X32.shape[1], n_lists)
    ivf.cp.seed = 0
    _, fit_s = median_time(lambda: (ivf.train(X32), ivf.add(X32)), 1)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(n_lists)])
    rows = []
    for n_probe in [n for n in PROBES if n <= n_lists]:
        ivf.nprobe = n_probe
        (_, ind), t = median_time(lambda: ivf.search(Q32, k), repeats)
        dist = true_distances(X_train, X_test, ind)
        _, lists = ivf.quantizer.search(Q32, n_probe)
        row = {"method": "faiss IVF-Flat", "effort": {"nprobe": n_probe},
               "recall": recall_at_k(dist, true_dist),
               "candidates": float(sizes[lists].sum(1).mean()), "qps": len(X_test) / t,
               "fit_s": fit_s}
        rows.append(row)
        log(f"  {'faiss IVF-Flat':<22} nprobe={n_probe:<15} recall={row['recall']:.4f} "
            f"candidates={row['candidates']:7.0f} qps={row['qps']:8.0f}")
        if row["recall"] >= STOP_AT:
            break
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist",
                        choices=["fashion-mnist", "embedding-like"])
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--n-clusters", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--alternate", type=int, default=9)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    X_train, X_test = load(args.dataset)
    k = args.k
    true_dist, _ = exact_search(X_train, X_test, k, n_jobs=-1)
    results, fits, fitted = [], {}, {}
    for name, params, efforts in (
        ("default (graph + mlp)", {}, [{"probe_mass": m} for m in MASSES]),
        ("centroid (k-means)", {"router": "centroid"}, [{"n_probe": n} for n in PROBES]),
    ):
        nn = ClusterFilteredKNN(n_neighbors=k, n_clusters=args.n_clusters, random_state=0,
                                **params)
        _, fit_s = median_time(lambda nn=nn: nn.fit(X_train), 1)
        fits[name], fitted[name] = fit_s, nn
        n_clusters = nn.n_clusters_
        log(f"{name}: {nn.partition_} partition, {n_clusters} clusters, fit {fit_s:.1f} s, "
            f"router epochs {nn.n_iter_}")
        efforts = [e for e in efforts if e.get("n_probe", 0) <= n_clusters]
        results += sweep_ours(name, nn, X_train, X_test, true_dist, efforts, args.repeats,
                              fit_s)
    results += sweep_faiss(X_train, X_test, true_dist, k, n_clusters, args.repeats)

    lines = [f"{args.dataset}: {len(X_train)} fitted x {len(X_test)} queries, k={k}, "
             f"{n_clusters} clusters (lists), fit: "
             + ", ".join(f"{m} {s:.1f} s" for m, s in fits.items())]
    by = {m: [r for r in results if r["method"] == m]
          for m in dict.fromkeys(r["method"] for r in results)}
    summary = {}
    for method, rows in by.items():
        c90, q95 = at_recall(rows, 0.90, "candidates"), at_recall(rows, 0.95, "qps")
        summary[method] = {"candidates_at_0.90": c90, "qps_at_0.95": q95}
        extra = ""
        if "route_ms_per_10k" in rows[0]:
            r95 = at_recall(rows, 0.95, "route_ms_per_10k")
            s95 = at_recall(rows, 0.95, "search_ms_per_10k")
            if r95 is not None:
                extra = f"   at 0.95 per 10k queries: route {r95:.1f} ms, search {s95:.1f} ms"
        lines.append(f"  {method:<22} candidates at recall 0.90: "
                     f"{'never' if c90 is None else f'{c90:7.0f}'}   q/s at recall 0.95: "
                     f"{'never' if q95 is None else f'{q95:8.0f}'}{extra}")
    ours, base = summary.get("default (graph + mlp)"), summary.get("centroid (k-means)")
    if ours and base and ours["candidates_at_0.90"] and base["candidates_at_0.90"]:
        lines.append(f"  default / centroid candidates at 0.90: "
                     f"{ours['candidates_at_0.90'] / base['candidates_at_0.90']:.3f} "
                     "(goal <= 0.75)")
    for peer, goal in (("centroid (k-means)", 1.2), ("faiss IVF-Flat", 1.5)):
        other = summary.get(peer)
        if ours and other and ours["qps_at_0.95"] and other["qps_at_0.95"]:
            lines.append(f"  default / {peer} q/s at 0.95: "
                         f"{ours['qps_at_0.95'] / other['qps_at_0.95']:.2f}x (goal >= {goal})")
    if args.alternate:
        qps = alternate_at_recall(fitted, results, X_test, 0.95, args.alternate)
        mlp, centroid = qps.get("default (graph + mlp)"), qps.get("centroid (k-means)")
        summary["alternating_qps_at_0.95"] = qps
        if mlp and centroid:
            lines.append(f"  alternating {args.alternate} rounds: default {mlp:.0f} / centroid "
                         f"{centroid:.0f} q/s at 0.95: {mlp / centroid:.2f}x (goal >= 1.2)")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "summary": summary}, f,
                      indent=1)


if __name__ == "__main__":
    main()
