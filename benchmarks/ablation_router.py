"""Partitions and routers: where ClusterFilteredKNN's candidates come from.

    python benchmarks/ablation_router.py [--partitions minibatch kmeans metis]
        [--hidden 256] [--label-neighbors 10] [--epochs 30] [--json FILE]

Fashion-MNIST (60k fitted, 10k queries, k=10), one number of clusters. For
each partition of the fitted points (given to ``ClusterFilteredKNN`` as
``partition=labels``):

* the share of 10-NN graph edges that cross parts (what no router can undo);
* candidates per query needed for recall@10 = 0.90 (interpolated), when
  parts are ranked by an *oracle* (the number of the query's true
  neighbours each part holds), by the nearest part mean
  (``router='centroid'``), by the 'mlp' router trained on that partition
  with a fixed ``n_probe``, and with the 'mlp' router probing by
  probability mass (``probe_mass``, the default effort).

Recall is counted from the parts the true neighbours lie in, which is what an
exact search inside the probed parts returns. Partitions: 'minibatch'
(MiniBatchKMeans, ``router='centroid'``'s choice above 20k points), 'kmeans'
(full KMeans), 'metis' (balanced min-cut partition of the symmetrised exact
10-NN graph, as ``partition='graph'`` does on an approximate one; needs
pymetis).
"""

import argparse
import json
import sys
import time
import warnings

import numpy as np

from skknn import ClusterFilteredKNN
from skknn._search import drop_self, exact_search
from skknn.datasets import load_fashion_mnist

PROBES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)
MASSES = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)


def log(message):
    print(message, file=sys.stderr, flush=True)


def _partition(name, X, graph, n_parts, seed):
    if name == "minibatch":
        from sklearn.cluster import MiniBatchKMeans

        return MiniBatchKMeans(n_parts, n_init=1, random_state=seed).fit(X).labels_
    if name == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_parts, n_init=1, random_state=seed).fit(X).labels_
    import pymetis
    from scipy.sparse import csr_matrix

    n = len(X)
    A = csr_matrix((np.ones(graph[:, :10].size), graph[:, :10].ravel(),
                    np.arange(0, graph[:, :10].size + 1, 10)), shape=(n, n))
    A = (A + A.T).tocsr()
    A.setdiag(0)
    A.eliminate_zeros()
    A.sort_indices()
    if hasattr(pymetis, "CSRAdjacency"):
        _, parts = pymetis.part_graph(n_parts, adjacency=pymetis.CSRAdjacency(A.indptr, A.indices))
    else:
        _, parts = pymetis.part_graph(n_parts, xadj=A.indptr, adjncy=A.indices)
    return np.asarray(parts)


def _point(labels, probes, true_ind):
    """(recall, mean candidates) of probing ``probes`` (-1: none)."""
    sizes = np.bincount(labels)
    true_parts = labels[true_ind]
    recall = (true_parts[:, :, None] == probes[:, None, :]).any(axis=2).mean()
    candidates = np.where(probes >= 0, sizes[np.maximum(probes, 0)], 0).sum(axis=1).mean()
    return float(recall), float(candidates)


def _at(curve, target=0.90):
    curve = sorted(curve)
    for (r0, c0), (r1, c1) in zip(curve, curve[1:]):
        if r0 <= target <= r1:
            return c0 + (target - r0) / max(r1 - r0, 1e-12) * (c1 - c0)
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", nargs="+", default=["minibatch", "kmeans", "metis"])
    parser.add_argument("--n-clusters", type=int, default=245)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256])
    parser.add_argument("--label-neighbors", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    X, _, X_test, _ = load_fashion_mnist()
    n_parts = args.n_clusters
    m = max(10, args.label_neighbors)
    tic = time.perf_counter()
    graph = drop_self(*exact_search(X, None, m + 1, n_jobs=-1), np.arange(len(X)))[1]
    true_ind = exact_search(X, X_test, 10, n_jobs=-1)[1]
    log(f"exact {m}-NN graph and test neighbours: {time.perf_counter() - tic:.0f} s")
    rows = []
    for name in args.partitions:
        if name == "metis":
            try:
                import pymetis  # noqa: F401
            except ImportError:
                log("metis: pymetis not installed, skipped")
                continue
        tic = time.perf_counter()
        labels = _partition(name, X, graph, n_parts, 0)
        part_s = time.perf_counter() - tic
        sizes = np.bincount(labels, minlength=n_parts)
        cut = float(np.mean(labels[graph[:, :10]] != labels[:, None]))
        oracle = np.zeros((len(X_test), n_parts))
        np.add.at(oracle, (np.arange(len(X_test))[:, None], labels[true_ind]), 1.0)
        oracle -= 1e-6 * sizes  # among equals, the smaller part first
        oracle_order = np.argsort(-oracle, axis=1, kind="stable")
        kwargs = {"n_neighbors": 10, "partition": labels, "random_state": 0, "n_jobs": -1}
        centroid = ClusterFilteredKNN(router="centroid", n_probe=1, **kwargs).fit(X)
        tic = time.perf_counter()
        mlp = ClusterFilteredKNN(hidden_layer_sizes=tuple(args.hidden),
                                 n_label_neighbors=args.label_neighbors, epochs=args.epochs,
                                 **kwargs).fit(X)
        router_s = time.perf_counter() - tic
        curves = {
            "oracle": [_point(labels, oracle_order[:, :n], true_ind) for n in PROBES],
            "centroid": [_point(labels, centroid.route(X_test, n), true_ind) for n in PROBES],
            "mlp": [_point(labels, mlp.route(X_test, n), true_ind) for n in PROBES],
        }
        curves["mlp_mass"] = []
        for mass in MASSES:
            mlp.search_params_ = {"probe_mass": mass}
            curves["mlp_mass"].append(_point(labels, mlp.route(X_test), true_ind))
        row = {"partition": name, "partition_s": part_s, "cut_share": cut,
               "size_min": int(sizes.min()), "size_max": int(sizes.max()),
               "router_fit_s": router_s, "router_epochs": mlp.n_iter_}
        for key, curve in curves.items():
            row[f"{key}_candidates_at_0.90"], row[f"{key}_curve"] = _at(curve), curve
        rows.append(row)

        def fmt(key, row=row):
            value = row[f"{key}_candidates_at_0.90"]
            return "never" if value is None else f"{value:.0f}"

        print(f"{name:<10} cut={cut:.3f} sizes {sizes.min()}-{sizes.max()}  candidates at "
              f"recall 0.90: oracle {fmt('oracle')}  centroid {fmt('centroid')}  mlp "
              f"{fmt('mlp')}  mlp by mass {fmt('mlp_mass')}  (partition {part_s:.0f} s, "
              f"router fit {router_s:.0f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
