"""ShardedNeighbors on a Dask LocalCluster against the same estimator in one process.

    python benchmarks/bench_sharded.py [--n-samples 200000] [--n-features 128]
        [--estimator cluster|learned] [--queries 10000 50000] [--stream 2000000] [--json]

Data: embedding-like vectors (:func:`skknn.datasets.make_embedding_like`),
``--n-samples`` fitted rows and the largest of ``--queries`` as queries; each
of ``--queries`` is a number of queries searched in one call (the first rows),
timed on the same fitted estimators; exact neighbours from a float64 brute
force. Measured in one run, k = 10:

* ``single``: the estimator in this process (all cores);
* ``1 worker`` and ``2 workers``: ``ShardedNeighbors(estimator, n_shards=2)``
  on a ``LocalCluster`` with one thread per worker (the same two shards, so
  that the work is the same and only the workers differ), after
  :func:`skknn.setup_dask_workers`;
* ``1 worker clusters`` and ``2 workers clusters``: the same with
  ``placement='clusters'`` (each query visits the shards of its nearest
  coarse centres);
* ``2 replicas``: ``ShardedNeighbors(estimator, n_shards=1, replicas=2)`` on
  two such workers: the whole index on each, the queries shared.

For each: fit seconds (logged with each shard's rows, training epochs and
fit seconds on its worker: a fit on several workers waits for its slowest
shard, early stopping gives shards of the same size different epochs, and
two shards fitted side by side share the machine), and over the search efforts
queries/s and recall@10 (of the queries timed); the table gives, for each
number of queries per call, q/s at the cheapest effort reaching ``--recall``
("step") and at exactly ``--recall`` ("interp.": the time per query
interpolated linearly in recall between the two efforts around it, which
splitting the queries between those two efforts would give; it takes the
coarseness of the effort grid out of the comparison), and the peak resident
memory of each worker process. Then ``--stream`` query rows as a dask array
(generated on the workers, 50,000 rows a chunk) are searched lazily and
reduced, with the workers' memory sampled every 0.2 s: flat memory means the
peak does not grow with the number of rows streamed (printed at a quarter and
at all of them).
"""

import argparse
import json
import sys
import threading
import time
import warnings

import numpy as np

K = 10


def _log(message):
    print(f"[sharded] {message}", file=sys.stderr, flush=True)


def _estimator(name):
    from skknn import ClusterFilteredKNN, LearnedNeighbors

    if name == "cluster":
        return ClusterFilteredKNN(n_neighbors=K, random_state=0)
    return LearnedNeighbors(n_neighbors=K, random_state=0)


def _efforts(estimator):
    """The effort grid of the fitted estimator (``_search_efforts``)."""
    return list(estimator._search_efforts())


def _recall(ind, dist, exact_dist):
    from skknn._search import recall_at_k

    # Distances come back in the data's dtype (float32): recall_at_k counts ties
    # within its rounding.
    return recall_at_k(dist, exact_dist)


def _sweep(search, set_effort, efforts, Q, exact_dist, sizes, repeats=3):
    """``{size: [(effort, recall, q/s), ...]}`` over the efforts, ``size``
    queries a call, stopping past recall 0.995 (of the largest size)."""
    rows = {size: [] for size in sizes}
    for effort in efforts:
        set_effort(effort)
        for size in sizes:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                dist, ind = search(Q[:size])
                times.append(time.perf_counter() - start)
            recall = _recall(ind, dist, exact_dist[:size])
            rows[size].append((effort, recall, size / float(np.median(times))))
        _log(f"  {effort} " + ", ".join(f"{size:,}/call: recall={r[-1][1]:.4f} q/s={r[-1][2]:,.0f}"
                                        for size, r in rows.items()))
        if recall >= 0.995:
            break
    return rows


def _at_recall(rows, target):
    """q/s at the cheapest effort reaching ``target`` (``qps``), and at
    ``target`` exactly (``qps_interp``): the seconds per query interpolated
    linearly in recall between that effort and the one before it."""
    for j, (effort, recall, qps) in enumerate(rows):
        if recall >= target:
            point = {"effort": effort, "recall": recall, "qps": qps, "qps_interp": qps}
            if j and rows[j - 1][1] < target < recall:
                (_, r0, q0), (_, r1, q1) = rows[j - 1], rows[j]
                share = (target - r0) / (r1 - r0)
                point["qps_interp"] = 1.0 / ((1 - share) / q0 + share / q1)
            return point
    return None


def _at_recalls(rows, target):
    return {size: _at_recall(r, target) for size, r in rows.items()}


def _worker_peaks(client):
    """Each worker process's peak resident memory (MB), lowest first."""
    from bench_scaling import _peak_rss_mb  # (this directory is on the workers' path too)

    return sorted(client.run(_peak_rss_mb).values())


def _epochs(estimator):
    """Training epochs of a fitted estimator's network (its router or embedder)."""
    embedder = getattr(estimator, "embedder_", None)
    return getattr(estimator, "n_iter_", getattr(embedder, "n_iter_", None))


def _shard_fit_seconds(tasks):
    """Each shard's fit task's compute seconds on its worker, in shard order
    (from Dask's task stream; the keys are ``skknn-fit-<shard>-<token>``)."""
    seconds = {}
    for task in tasks:
        if isinstance(task["key"], str) and task["key"].startswith("skknn-fit-"):
            shard = int(task["key"].split("-")[2])
            seconds[shard] = sum(s["stop"] - s["start"] for s in task["startstops"]
                                 if s["action"] == "compute")
    return [seconds[shard] for shard in sorted(seconds)]


def _worker_rss(client):
    def rss():
        import psutil

        return psutil.Process().memory_info().rss / 2**20

    return client.run(rss)


def _sharded(n_workers, estimator, X, Q, exact_dist, args, n_shards=2, replicas=1,
             placement="rows"):
    from distributed import Client, LocalCluster, get_task_stream

    from skknn import ShardedNeighbors, setup_dask_workers

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit="8GiB") as cluster, \
            Client(cluster) as client:
        setup_dask_workers(client)
        with get_task_stream(client) as stream:
            start = time.perf_counter()
            sharded = ShardedNeighbors(estimator, n_shards=n_shards, replicas=replicas,
                                       placement=placement, client=client).fit(X)
            fit_s = time.perf_counter() - start
        shards = sharded.gather_shards()
        # The fit waits for the slowest shard: its rows, training epochs and
        # seconds (its task's compute on its worker).
        shard_rows = [s.n_samples_fit_ for s in shards]
        shard_epochs = [_epochs(s) for s in shards]
        shard_fit_s = _shard_fit_seconds(stream.data)
        _log(f"{n_workers} worker(s), {n_shards} shard(s) x {replicas}, {placement}: fit "
             f"{fit_s:.1f} s, recall_={sharded.recall_:.4f}, coarse_probe_="
             f"{sharded.coarse_probe_}; shards' rows {shard_rows}, epochs {shard_epochs}, "
             f"fits {[round(s, 1) for s in shard_fit_s]} s")
        efforts = list(zip(*[s._search_efforts() for s in shards]))

        def set_effort(effort):
            sharded.search_params_ = list(effort)

        rows = _sweep(sharded.kneighbors, set_effort, efforts, Q, exact_dist, args.queries)
        rows = {size: [(e[0], r, q) for e, r, q in sweep] for size, sweep in rows.items()}
        result = {"fit_s": fit_s, "sweep": rows,
                  "shard_rows": shard_rows, "shard_epochs": shard_epochs,
                  "shard_fit_s": shard_fit_s,
                  "coarse_probe": sharded.coarse_probe_,
                  # Shards a query visits (all of them with placement='rows').
                  "shards_per_query": n_shards if placement == "rows" else float(
                      sharded._router.visits(Q, sharded.coarse_probe_).sum(axis=1).mean()),
                  "at_recall": _at_recalls(rows, args.recall),
                  "peak_rss_mb_per_worker": _worker_peaks(client)}
        if n_workers == 2 and n_shards == 2 and args.stream and placement == "rows":
            chosen = result["at_recall"][args.queries[0]] or {
                "effort": rows[args.queries[0]][-1][0]}
            sharded.search_params_ = [chosen["effort"]] * 2
            result["stream"] = _stream(client, sharded, X.shape[1], args.stream)
        return result


def _stream(client, sharded, n_features, n_rows):
    """Search ``n_rows`` lazily generated queries; sample the workers' memory."""
    import dask
    import dask.array as da

    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.perf_counter(), sum(_worker_rss(client).values())))
            time.sleep(0.2)

    baseline = sum(_worker_rss(client).values())
    thread = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    thread.start()
    Q = da.random.RandomState(1).standard_normal((n_rows, n_features), chunks=(50_000, -1))
    Q = (Q / da.linalg.norm(Q, axis=1, keepdims=True)).astype(np.float32)
    dist, ind = sharded.kneighbors(Q)
    mean_dist, max_ind = dask.compute(dist.mean(), ind.max())
    took = time.perf_counter() - start
    stop.set()
    thread.join()
    times = np.array([t - start for t, _ in samples])
    rss = np.array([m for _, m in samples])
    quarter = rss[times <= took / 4]
    out = {"rows": n_rows, "seconds": took, "qps": n_rows / took,
           "baseline_mb": baseline, "peak_mb_first_quarter": float(quarter.max()),
           "peak_mb": float(rss.max()), "check": [float(mean_dist), int(max_ind)]}
    _log(f"stream: {n_rows:,} rows in {took:.1f} s ({out['qps']:,.0f} q/s); workers' memory "
         f"{baseline:.0f} MB at rest, peak {out['peak_mb_first_quarter']:.0f} MB in the first "
         f"quarter, {out['peak_mb']:.0f} MB overall")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=200_000)
    parser.add_argument("--n-features", type=int, default=128)
    parser.add_argument("--estimator", choices=["cluster", "learned"], default="cluster")
    parser.add_argument("--recall", type=float, default=0.95)
    parser.add_argument("--queries", type=int, nargs="+", default=[10_000, 50_000],
                        help="queries per kneighbors call (each is timed)")
    parser.add_argument("--stream", type=int, default=2_000_000)
    parser.add_argument("--placement", nargs="+", choices=["rows", "clusters"],
                        default=["rows", "clusters"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    from sklearn.neighbors import NearestNeighbors

    from skknn.datasets import make_embedding_like

    args.queries = sorted(set(args.queries))
    data, _ = make_embedding_like(args.n_samples + args.queries[-1], args.n_features,
                                  random_state=0)
    data = data.astype(np.float32)
    X, Q = data[:args.n_samples], data[args.n_samples:]
    exact_dist = NearestNeighbors(n_neighbors=K, algorithm="brute").fit(
        X.astype(np.float64)).kneighbors(Q.astype(np.float64))[0]
    results = {}

    estimator = _estimator(args.estimator)
    start = time.perf_counter()
    single = _estimator(args.estimator).fit(X)
    fit_s = time.perf_counter() - start
    _log(f"single process: fit {fit_s:.1f} s, recall_={single.recall_:.4f}")

    def set_effort(effort):
        single.search_params_ = effort

    rows = _sweep(single.kneighbors, set_effort, _efforts(single), Q, exact_dist, args.queries)
    results["single"] = {"fit_s": fit_s, "sweep": rows,
                         "at_recall": _at_recalls(rows, args.recall)}
    for placement in args.placement:
        name = "" if placement == "rows" else " clusters"
        for n_workers in (1, 2):
            results[f"{n_workers} worker{name}"] = _sharded(n_workers, estimator, X, Q,
                                                            exact_dist, args,
                                                            placement=placement)
    results["2 replicas"] = _sharded(2, estimator, X, Q, exact_dist, args, n_shards=1,
                                     replicas=2)

    if args.json:
        print(json.dumps(results, default=str))
        return
    print(f"{args.n_samples:,} x {args.n_features} embedding-like, k={K}, "
          f"{type(estimator).__name__}; q/s at recall >= {args.recall} (step) and at "
          f"{args.recall} (interp.), per number of queries in a call")
    header = "".join(f" {f'{size:,}/call: step':>18} {'recall':>7} {'interp.':>8} {'vs one':>6}"
                     for size in args.queries)
    print(f"{'':<18} {'fit s':>6} {'shards/q':>8}{header}  peak RSS per worker (MB)")
    single = results["single"]
    for name, res in results.items():
        cells = []
        for size in args.queries:
            point, one = res["at_recall"][size] or {}, single["at_recall"][size] or {}
            ratio = point.get("qps_interp", np.nan) / one.get("qps_interp", np.nan)
            cells.append(f" {point.get('qps', np.nan):>18,.0f} {point.get('recall', np.nan):>7.4f}"
                         f" {point.get('qps_interp', np.nan):>8,.0f} {ratio:>5.2f}x")
        peaks = " / ".join(f"{p:.0f}" for p in res.get("peak_rss_mb_per_worker", []))
        print(f"{name:<18} {res['fit_s']:>6.1f} {res.get('shards_per_query', 1):>8.2f}"
              f"{''.join(cells)}  {peaks}")
    for name in ("", " clusters"):
        if f"1 worker{name}" not in results:
            continue
        one, two = results[f"1 worker{name}"], results[f"2 worker{name}"]
        for size in args.queries:
            if one["at_recall"][size] and two["at_recall"][size]:
                def wall(r, size=size):
                    return r["fit_s"] + size / r["at_recall"][size]["qps"]

                query = one["at_recall"][size]["qps"] / two["at_recall"][size]["qps"]
                print(f"2 workers / 1 worker wall time{name} (fit + {size:,} queries, step): "
                      f"{wall(two) / wall(one):.2f}x  (fit {two['fit_s'] / one['fit_s']:.2f}x, "
                      f"query {query:.2f}x)")
        if one["shard_fit_s"] and two["shard_fit_s"]:
            # What the shards' fits alone give: the slowest side by side,
            # against all of them one after another.
            print(f"shards' fits{name}: {' + '.join(f'{t:.1f}' for t in one['shard_fit_s'])} s "
                  f"on 1 worker, {' / '.join(f'{t:.1f}' for t in two['shard_fit_s'])} s on 2 "
                  f"(slowest / sum {max(two['shard_fit_s']) / sum(one['shard_fit_s']):.2f}x; "
                  f"epochs {two['shard_epochs']})")
    if "stream" in results.get("2 worker", {}):
        s = results["2 worker"]["stream"]
        print(f"stream {s['rows']:,} rows: {s['qps']:,.0f} q/s; workers' memory at rest "
              f"{s['baseline_mb']:.0f} MB, peak {s['peak_mb_first_quarter']:.0f} MB (first "
              f"quarter) / {s['peak_mb']:.0f} MB (all)")


if __name__ == "__main__":
    main()
