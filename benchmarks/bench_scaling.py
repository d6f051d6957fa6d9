"""How fit time, peak memory and query speed grow with the number of points.

    python benchmarks/bench_scaling.py [--sizes 100000 300000 1000000]
        [--n-features 384] [--n-queries 1000] [--methods learned hnswlib pynndescent]

For each size, embedding-like vectors (:func:`skknn.datasets.make_embedding_like`,
the data of ``python -m skknn --dataset embedding-like``) are generated once;
each method then runs in a fresh process (so that its peak resident memory is
its own), is fitted, and is queried over its effort knob exactly as
``python -m skknn`` does (``skknn._compare``). Printed per size and method:
fit seconds, peak RSS (it includes the data, whose size is printed too), and
queries/s at recall@k >= --target-recall (skknn: the effort ``fit`` chose;
peers: their fastest setting reaching it on these queries).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np


def _log(message):
    print(f"[scaling] {message}", file=sys.stderr, flush=True)


def _child(args):
    """Fit and query one method on saved data; print its result as JSON."""
    from skknn._compare import measure, methods, table_point

    X = np.load(os.path.join(args.child_data, "X.npy"))
    Q = np.load(os.path.join(args.child_data, "Q.npy"))
    reference = np.load(os.path.join(args.child_data, "reference.npy"))
    method = methods()[args.child]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = measure(method, args, X, Q, reference, _log)
    point, how = table_point(result, args.target_recall)
    result.update(table=point, chosen_by=how, peak_rss_mb=_peak_rss_mb())
    print(json.dumps(result))


def _peak_rss_mb():
    """This process's peak resident memory.

    Linux's ``VmHWM`` belongs to the process image; ``ru_maxrss`` would also
    count the parent's peak before the fork (it survives ``exec``).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_size(n, args, tmp):
    from skknn._compare import true_distances
    from skknn._search import exact_search
    from skknn.datasets import make_embedding_like

    tic = time.perf_counter()
    data, _ = make_embedding_like(n + args.n_queries, args.n_features,
                                  random_state=args.random_state)
    X, Q = data[:n], data[n:]
    _log(f"n={n:,}: generated in {time.perf_counter() - tic:.0f} s; exact reference ...")
    reference = true_distances(X, Q, exact_search(X, Q, args.k, n_jobs=-1)[1])
    for name, array in (("X", X), ("Q", Q), ("reference", reference)):
        np.save(os.path.join(tmp, f"{name}.npy"), array)
    data_mb = X.nbytes / 2**20
    del data, X, Q
    rows = []
    for key in args.methods:
        _log(f"n={n:,}: {key} ...")
        command = [sys.executable, __file__, "--child", key, "--child-data", tmp,
                   "-k", str(args.k), "--target-recall", str(args.target_recall),
                   "--random-state", str(args.random_state)]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            _log(f"n={n:,}: {key} failed (exit {done.returncode}), skipped")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"n": n, "key": key, "method": result["method"], "fit_s": result["fit_s"],
                     "peak_rss_mb": result["peak_rss_mb"], "data_mb": data_mb,
                     "recall": result["table"]["recall"], "qps": result["table"]["qps"],
                     "effort": result["table"]["effort"], "chosen_by": result["chosen_by"]})
        _log("  " + _line(rows[-1]))
    return rows


def _line(row):
    return (f"{row['n']:>9,} {row['key']:<12} fit {row['fit_s']:7.1f} s  peak RSS "
            f"{row['peak_rss_mb']:7,.0f} MB (data {row['data_mb']:5,.0f})  recall "
            f"{row['recall']:.3f}  {row['qps']:9,.0f} q/s  {row['effort']}"
            + ("" if row["chosen_by"] == "fit" else " *"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--n-features", type=int, default=384)
    parser.add_argument("--n-queries", type=int, default=1000)
    parser.add_argument("--methods", nargs="+", default=["learned", "hnswlib", "pynndescent"])
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            rows += _run_size(n, args, tmp)
    print(f"{'n':>9} {'method':<12} fit, peak memory, and speed at recall@{args.k} >= "
          f"{args.target_recall}")
    for row in rows:
        print(_line(row))
    print("* peers: the fastest setting reaching the target on these queries; skknn: the "
          "effort fit chose.")
    first = {}
    for row in rows:
        base = first.setdefault(row["key"], row)
        if row is not base:
            growth = row["n"] / base["n"]
            print(f"{row['key']}: x{growth:.0f} points -> fit x{row['fit_s'] / base['fit_s']:.1f},"
                  f" peak RSS x{row['peak_rss_mb'] / base['peak_rss_mb']:.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
