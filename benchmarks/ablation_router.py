"""Why the learned router does not beat centroid routing: partitions and routers.

    python benchmarks/ablation_router.py [--partitions minibatch kmeans metis]
        [--hidden 256] [--label-neighbors 10] [--epochs 30] [--json FILE]

Fashion-MNIST (60k fitted, 10k queries, k=10), one number of clusters. For
each partition of the fitted points:

* the share of 10-NN graph edges that cross parts (what no router can undo);
* candidates per query needed for recall@10 = 0.90 (interpolated over
  n_probe) when parts are ranked by an *oracle* (the number of the query's
  true neighbours each part holds), by the nearest part mean ('centroid'),
  and by ClusterFilteredKNN's 'mlp' router trained on that partition.

Recall is counted from the parts the true neighbours lie in, which is what an
exact search inside the probed parts returns. Partitions: 'minibatch'
(MiniBatchKMeans, the estimator's choice above 20k points), 'kmeans' (full
KMeans), 'metis' (balanced min-cut partition of the symmetrised 10-NN graph;
needs ``pip install pymetis``, skipped otherwise).
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


def log(message):
    print(message, file=sys.stderr, flush=True)


class _GivenPartition(ClusterFilteredKNN):
    """The estimator with its partition and k-NN graph supplied (benchmark only)."""

    def _partition(self, B, train_rows, rng):
        self.labels_ = self.given_labels
        self._centers = _part_means(B, self.labels_, self.n_clusters_).astype(np.float32)
        self._centers_sqnorm = np.einsum("ij,ij->i", self._centers, self._centers)
        self.cluster_centers_ = self._space.raw_of_block(self._centers)

    def _soft_labels(self, rows):
        m = self.n_label_neighbors
        labels = np.zeros((len(rows), self.n_clusters_), dtype=np.float32)
        np.add.at(labels, (np.arange(len(rows))[:, None],
                           self.labels_[self.given_graph[rows, :m]]), 1.0 / m)
        return labels


def _part_means(X, labels, n_parts):
    sums = np.zeros((n_parts, X.shape[1]))
    np.add.at(sums, labels, X)
    return sums / np.maximum(np.bincount(labels, minlength=n_parts), 1)[:, None]


def _partition(name, X, graph, n_parts, seed):
    if name == "minibatch":
        from sklearn.cluster import MiniBatchKMeans

        return MiniBatchKMeans(n_parts, n_init=1, random_state=seed).fit(X).labels_
    if name == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_parts, n_init=1, random_state=seed).fit(X).labels_
    import pymetis

    adjacency = [set() for _ in range(len(X))]
    for i, row in enumerate(graph[:, :10]):
        for j in row:
            adjacency[i].add(int(j))
            adjacency[int(j)].add(i)
    _, parts = pymetis.part_graph(n_parts, adjacency=[sorted(a) for a in adjacency])
    return np.asarray(parts)


def _candidates_at(labels, scores, true_ind, target=0.90):
    """Mean candidates at recall ``target`` when parts are probed by ``scores``."""
    sizes = np.bincount(labels, minlength=scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")
    true_parts = labels[true_ind]
    curve = []
    for n_probe in PROBES:
        probed = order[:, :n_probe]
        recall = (true_parts[:, :, None] == probed[:, None, :]).any(axis=2).mean()
        curve.append((float(recall), float(sizes[probed].sum(axis=1).mean())))
    for (r0, c0), (r1, c1) in zip(curve, curve[1:]):
        if r0 <= target <= r1:
            return c0 + (target - r0) / max(r1 - r0, 1e-12) * (c1 - c0), curve
    return None, curve


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
        means = _part_means(X, labels, n_parts)
        # Minus squared distance to each part's mean, up to a per-query constant.
        centroid = 2.0 * X_test @ means.T - np.einsum("ij,ij->i", means, means)
        router = _GivenPartition(
            n_clusters=n_parts, n_probe=1, hidden_layer_sizes=tuple(args.hidden),
            n_label_neighbors=args.label_neighbors, epochs=args.epochs, random_state=0,
            n_jobs=-1,
        )
        router.given_labels, router.given_graph = labels, graph
        tic = time.perf_counter()
        router.fit(X)
        router_s = time.perf_counter() - tic
        mlp = router._router(router._router_input(router._space.rows(X_test).block))
        row = {"partition": name, "partition_s": part_s, "cut_share": cut,
               "size_min": int(sizes.min()), "size_max": int(sizes.max()),
               "router_fit_s": router_s, "router_epochs": router.n_iter_}
        for key, scores in (("oracle", oracle), ("centroid", centroid), ("mlp", mlp)):
            row[f"{key}_candidates_at_0.90"], row[f"{key}_curve"] = _candidates_at(
                labels, scores, true_ind)
        rows.append(row)
        print(f"{name:<10} cut={cut:.3f} sizes {sizes.min()}-{sizes.max()}  candidates at "
              f"recall 0.90: oracle {row['oracle_candidates_at_0.90']:.0f}  centroid "
              f"{row['centroid_candidates_at_0.90']:.0f}  mlp {row['mlp_candidates_at_0.90']:.0f}"
              f"  (partition {part_s:.0f} s, router {router_s:.0f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
