"""LearnedNeighbors against the graph indexes, on images and embedding vectors.

    python benchmarks/bench_learned.py [--datasets fashion-mnist embedding-like]
        [--estimators learned learned-pca hnswlib pynndescent faiss-ivf] [--json FILE]

Runs ``python -m skknn --json`` on each data set (the same peers, efforts and
timing as the command line; nothing measured twice), then prints the ratios
the goals are stated in, from that one run:

* q/s of LearnedNeighbors with defaults and ``target_recall=0.95``, at the
  effort ``fit`` chose, over the best q/s of each peer reaching recall 0.95
  on the same queries (the peers' effort is tuned on the test queries), and
  over the best peer reaching the recall LearnedNeighbors reached;
* the first ``kneighbors`` after ``fit`` against a repeated identical call
  (2,000 queries, defaults, 20,000 fitted rows of the first data set).
"""

import argparse
import json
import subprocess
import sys
import time
import warnings

import numpy as np

_GRAPH_PEERS = ("hnswlib", "pynndescent")


def _log(message):
    print(f"[bench_learned] {message}", file=sys.stderr, flush=True)


def _compare(dataset, estimators):
    command = [sys.executable, "-m", "skknn", "--dataset", dataset, "--json",
               "--estimators", *estimators]
    _log(" ".join(command[1:]))
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout)


def _fastest(result, recall):
    """The fastest point of a method's curve reaching ``recall`` (or None)."""
    reaching = [p for p in result["curve"] if p["recall"] >= recall]
    return max(reaching, key=lambda p: p["qps"]) if reaching else None


def _ratios(run, target):
    by_key = {r["key"]: r for r in run["results"]}
    ours = by_key["learned"]["table"]
    lines = [f"{run['dataset']}: LearnedNeighbors (defaults) recall@{run['k']} "
             f"{ours['recall']:.3f} at {ours['qps']:,.0f} q/s "
             f"({ours['effort']}, fit {by_key['learned']['fit_s']:.1f} s)"]
    for key, result in by_key.items():
        if key in ("exact", "learned"):
            continue
        for recall, label in ((target, f">= {target}"), (ours["recall"], "at our recall")):
            peer = _fastest(result, recall)
            if peer is None:
                lines.append(f"  {result['method']:<38} {label:<14} never reached")
                continue
            lines.append(f"  {result['method']:<38} {label:<14} {peer['qps']:>9,.0f} q/s "
                         f"(recall {peer['recall']:.3f}, {peer['effort']}): "
                         f"ours / peer = {ours['qps'] / peer['qps']:.2f}x")
    best = [_fastest(by_key[key], target) for key in _GRAPH_PEERS if key in by_key]
    best = [p for p in best if p is not None]
    if best:
        peer = max(best, key=lambda p: p["qps"])
        met = "" if ours["recall"] >= target else f" (but our recall {ours['recall']:.3f} < "\
                                                   f"{target} on these queries)"
        lines.append(f"  best graph index at >= {target}: ours / best = "
                     f"{ours['qps'] / peer['qps']:.2f}x{met}")
    return "\n".join(lines)


def _first_query(dataset, n_fit=20_000, n_queries=2_000, repeats=3):
    """Seconds of the first kneighbors after fit, and of a repeated call."""
    from skknn import LearnedNeighbors

    if dataset == "fashion-mnist":
        from skknn.datasets import load_fashion_mnist

        X, _, Q, _ = load_fashion_mnist()
    else:
        from skknn.datasets import make_embedding_like

        data, _ = make_embedding_like(n_fit + n_queries, random_state=0)
        X, Q = data[:n_fit], data[n_fit:]
    X, Q = X[:n_fit], Q[:n_queries]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nn = LearnedNeighbors(10, target_recall=0.95, random_state=0).fit(X)
    tic = time.perf_counter()
    nn.kneighbors(Q)
    first = time.perf_counter() - tic
    again = []
    for _ in range(repeats):
        tic = time.perf_counter()
        nn.kneighbors(Q)
        again.append(time.perf_counter() - tic)
    return first, float(np.median(again))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "embedding-like"])
    parser.add_argument("--estimators", nargs="+",
                        default=["learned", "learned-pca", "hnswlib", "pynndescent",
                                 "faiss-ivf"])
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--json", help="also write the runs to this file")
    args = parser.parse_args(argv)
    estimators = ["learned"] + [e for e in args.estimators if e != "learned"]
    runs = [_compare(dataset, estimators) for dataset in args.datasets]
    first, again = _first_query(args.datasets[0])
    for run in runs:
        print(_ratios(run, args.target_recall))
    print(f"first kneighbors after fit: {first:.3f} s, repeated: {again:.3f} s "
          f"-> {first / again:.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"runs": runs, "first_query_s": first, "repeat_query_s": again}, fh,
                      indent=1)


if __name__ == "__main__":
    main()
