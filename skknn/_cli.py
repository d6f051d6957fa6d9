"""``python -m skknn``: recall against speed of skknn's searches, exact search and peers."""

import argparse
import json
import sys
import warnings
import zipfile

import numpy as np

from ._compare import measure, methods, plot, table_point

_DEFAULT_QUERIES = {"digits": 300, "fashion-mnist": 10000, "embedding-like": 10000,
                    "file": 10000}
_EMBEDDING_LIKE_TRAIN = 100_000
# Methods built on pynndescent, whose numba code compiles for about a minute
# the first time it runs after installation (then it is cached).
_SLOW_START = ("learned-ae-nnd", "pynndescent")


def _parser():
    keys = list(methods())
    parser = argparse.ArgumentParser(
        prog="python -m skknn",
        description=(
            "Compare skknn's neighbour searches with exact NearestNeighbors and with "
            "pynndescent, hnswlib and faiss where installed: recall@k, queries per second, "
            "fit seconds and speed-up over brute force. Euclidean distance."
        ),
    )
    parser.add_argument("--dataset", choices=["digits", "fashion-mnist", "embedding-like"],
                        default="digits",
                        help="data set (default: scikit-learn's bundled digits); "
                             "embedding-like: 100,000 generated unit vectors of 384 "
                             "dimensions shaped like text-model outputs (see "
                             "skknn.datasets.make_embedding_like)")
    parser.add_argument("--data-dir", help="folder with the Fashion-MNIST idx files")
    parser.add_argument("--data", metavar="FILE.npz",
                        help="your own data: a .npz file with 2-D arrays 'train' and 'test' "
                             "(overrides --dataset)")
    parser.add_argument("-k", type=_positive_int, default=10, help="neighbours (default 10)")
    parser.add_argument("--n-queries", type=_positive_int,
                        help="queries (default 300 for digits, else up to 10000 test rows)")
    parser.add_argument("--estimators", nargs="+", metavar="NAME", choices=keys,
                        help=f"methods to run, among: {', '.join(keys)} (default: all, peers "
                             "only if installed, and on digits not the pynndescent-based ones). "
                             "Exact search always runs: it is the reference")
    parser.add_argument("--target-recall", type=float, default=0.95,
                        help="target_recall of skknn's searches (default 0.95)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="save recall against queries/s, one curve per method over its "
                             "effort knob (needs matplotlib)")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--json", action="store_true",
                        help="print results as JSON instead of a table")
    return parser


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


_UNREADABLE = (ValueError, OSError, EOFError, zipfile.BadZipFile)


def _read_npz(path):
    """The 'train' and 'test' arrays of an .npz file as float32, or a ValueError."""
    def unreadable(exc):
        return ValueError(f"{path}: not a readable .npz file ({exc}).")

    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except _UNREADABLE as exc:
        raise unreadable(exc) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single array, not an .npz archive; save with "
                         "numpy.savez(FILE, train=..., test=...).")
    with loaded as npz:
        missing = [key for key in ("train", "test") if key not in npz.files]
        if missing:
            raise ValueError(
                f"{path}: no array named {' or '.join(map(repr, missing))} (found: "
                f"{', '.join(npz.files) or 'none'}); save with "
                "numpy.savez(FILE, train=..., test=...)."
            )
        try:
            arrays = {"train": npz["train"], "test": npz["test"]}
        except _UNREADABLE as exc:
            raise unreadable(exc) from None
    for name, array in arrays.items():
        if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError(f"{path}: '{name}' must be a non-empty 2-D array, got shape "
                             f"{array.shape}.")
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise ValueError(f"{path}: '{name}' must hold real numbers, got dtype "
                             f"{array.dtype}.")
        with np.errstate(over="ignore"):
            arrays[name] = array.astype(np.float32)
        if not np.all(np.isfinite(arrays[name])):
            raise ValueError(f"{path}: '{name}' contains NaN or infinity (or values too large "
                             "for float32).")
    if arrays["train"].shape[1] != arrays["test"].shape[1]:
        raise ValueError(f"{path}: 'train' has {arrays['train'].shape[1]} features but 'test' "
                         f"has {arrays['test'].shape[1]}.")
    return arrays["train"], arrays["test"]


def _load(args):
    """(name, X_train, X_test) as float32, or ValueError/OSError with a message."""
    if args.data is not None:
        train, test = _read_npz(args.data)
        n_queries = args.n_queries or _DEFAULT_QUERIES["file"]
        return args.data, train, test[:n_queries]
    if args.dataset == "digits":
        from sklearn.datasets import load_digits

        X = load_digits().data.astype(np.float32)
        n_queries = args.n_queries or _DEFAULT_QUERIES["digits"]
        if n_queries >= len(X) - args.k:
            raise ValueError(
                f"--n-queries {n_queries} leaves too few of digits' {len(X)} samples to search."
            )
        perm = np.random.RandomState(args.random_state).permutation(len(X))
        return "digits", X[perm[n_queries:]], X[perm[:n_queries]]
    if args.dataset == "embedding-like":
        from .datasets import make_embedding_like

        n_queries = args.n_queries or _DEFAULT_QUERIES["embedding-like"]
        X, _ = make_embedding_like(_EMBEDDING_LIKE_TRAIN + n_queries,
                                   random_state=args.random_state)
        return "embedding-like", X[:_EMBEDDING_LIKE_TRAIN], X[_EMBEDDING_LIKE_TRAIN:]
    from .datasets import load_fashion_mnist

    X_train, _, X_test, _ = load_fashion_mnist(args.data_dir)
    return ("fashion-mnist", X_train,
            X_test[: args.n_queries or _DEFAULT_QUERIES["fashion-mnist"]])


def _chosen_methods(args, log):
    """The methods to run, exact first, and the note on those left out by default.

    A ValueError if a requested peer is missing.
    """
    every = methods()
    requested = args.estimators
    keys = ["exact"] + [key for key in (requested or every) if key != "exact"]
    note = None
    if requested is None and args.data is None and args.dataset == "digits":
        # Keep the default run under a minute on a fresh install.
        note = (f"Not in the default digits run: {', '.join(_SLOW_START)} (pynndescent "
                "compiles for ~1 min on first use);\nadd them with --estimators, or run "
                "--dataset fashion-mnist.")
        log(note.replace("\n", " "))
        keys = [key for key in keys if key not in _SLOW_START]
    chosen = []
    for key in dict.fromkeys(keys):
        method = every[key]
        if method.available():
            chosen.append(method)
        elif requested:
            raise ValueError(f"{key} needs {method.requires[1]}, which is not installed "
                             f"(pip install {method.requires[1]}).")
        else:
            log(f"{key}: {method.requires[1]} not installed, skipped")
    return chosen, note


def _describe(effort):
    if effort is None:
        return "exact"
    return ", ".join(f"{key}={value}" for key, value in effort.items()) or "exact"


def _table(results, k, target_recall):
    brute = results[0]["table"]["qps"]
    head = (f"{'method':<46}{'recall@' + str(k):>10}{'queries/s':>12}{'speed-up':>10}"
            f"{'fit s':>8}  effort")
    lines = [head, "-" * len(head)]
    for r in results:
        point, how = r["table"], r["chosen_by"]
        mark = "" if how == "fit" else " *"
        lines.append(
            f"{r['method']:<46}{point['recall']:>10.3f}{point['qps']:>12,.0f}"
            f"{point['qps'] / brute:>9.2f}x{r['fit_s']:>8.2f}  {_describe(point['effort'])}{mark}"
        )
    lines.append(
        f"\nskknn rows: the effort fit() chose for target_recall={target_recall} on held-out "
        "training points.\n* peers: the fastest setting reaching that recall on these queries "
        "(tuned on the test set)."
    )
    if len(results) > 1 and max(r["table"]["qps"] for r in results[1:]) < brute:
        lines.append(
            "At this size exact brute force is fastest: approximate search pays off on "
            "larger data,\ne.g. python -m skknn --dataset fashion-mnist."
        )
    return "\n".join(lines)


def main(argv=None):
    """Run the comparison; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 < args.target_recall <= 1:
        parser.error(f"--target-recall must be in (0, 1], got {args.target_recall}")

    def log(message):
        print(f"[skknn] {message}", file=sys.stderr, flush=True)

    def fail(message):
        print(f"python -m skknn: error: {message}", file=sys.stderr)
        return 1

    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return fail("--plot needs matplotlib (pip install matplotlib).")
    try:
        name, X_train, X_test = _load(args)
        chosen, note = _chosen_methods(args, log)
    except (OSError, ValueError) as exc:
        return fail(exc)
    if args.k > len(X_train):
        return fail(f"-k {args.k} exceeds the {len(X_train)} indexed points.")
    log(f"{name}: {len(X_train)} indexed points x {X_train.shape[1]} features, "
        f"{len(X_test)} queries, k={args.k}")
    results, reference = [], None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, method in enumerate(chosen, 1):
            log(f"[{i}/{len(chosen)}] {method.name}: fitting ...")
            try:
                result = measure(method, args, X_train, X_test, reference, log)
            except Exception as exc:  # a method failing on this data: say so, go on
                if reference is None:
                    return fail(f"{method.name} failed: {type(exc).__name__}: {exc}")
                log(f"  {method.name} failed, skipped: {type(exc).__name__}: {exc}")
                continue
            if reference is None:
                reference = result.pop("dist")
            result["table"], result["chosen_by"] = table_point(result, args.target_recall)
            results.append(result)
    if args.plot is not None:
        try:
            plot(results, args.plot, f"{name}: {len(X_train)} points, {len(X_test)} queries, "
                                     f"k={args.k}")
        except (OSError, ValueError) as exc:
            return fail(f"cannot write the plot to {args.plot}: {exc}")
        log(f"plot saved to {args.plot}")
    if args.json:
        print(json.dumps({"dataset": name, "k": args.k, "n_train": len(X_train),
                          "n_queries": len(X_test), "target_recall": args.target_recall,
                          "note": note, "results": results}, indent=1))
    else:
        print(_table(results, args.k, args.target_recall) + (f"\n{note}" if note else ""))
    return 0
