"""``python -m skknn``, the Fashion-MNIST loader and the examples."""

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from skknn import _cli
from skknn._cli import main
from skknn.datasets import load_fashion_mnist, make_embedding_like, read_idx

ROOT = Path(__file__).resolve().parents[1]


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_fashion(tmp_path, rng):
    train = rng.randint(0, 256, size=(60, 28, 28))
    test = rng.randint(0, 256, size=(12, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", train)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.randint(0, 10, 60))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.randint(0, 10, 12))
    return tmp_path, train, test


def test_loader_reads_idx_files(tiny_fashion):
    folder, train, test = tiny_fashion
    X_train, y_train, X_test, y_test = load_fashion_mnist(folder)
    assert X_train.shape == (60, 784) and X_train.dtype == np.float32
    assert_array_equal(X_train, train.reshape(60, -1))
    assert_array_equal(X_test, test.reshape(12, -1))
    assert y_train.shape == (60,) and y_test.shape == (12,)


def test_loader_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_fashion_mnist(tmp_path)


def test_loader_rejects_corrupt_files(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"abc")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short.gz")


FAST = ["--estimators", "learned-pca", "cluster-centroid"]


def test_main_on_digits_prints_a_table(capsys):
    assert main(["-k", "5", "--n-queries", "100", *FAST]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "recall@5" in lines[0] and "queries/s" in lines[0]
    rows = [line.split()[0] for line in lines[2:] if line.strip()]
    assert rows[:3] == ["NearestNeighbors", "LearnedNeighbors", "ClusterFilteredKNN"]
    exact_row = next(line for line in lines if line.startswith("NearestNeighbors"))
    assert "1.000" in exact_row and "1.00x" in exact_row
    # Progress while it works, on stderr: each method and each effort measured.
    assert "[1/3] NearestNeighbors" in captured.err
    assert "{'n_probe': 1}: recall@5=" in captured.err


def test_main_json_on_fashion_layout(tiny_fashion, capsys):
    folder, _, _ = tiny_fashion
    args = ["--dataset", "fashion-mnist", "--data-dir", str(folder), "-k", "3", "--json", *FAST]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_train"] == 60 and out["n_queries"] == 12 and out["k"] == 3
    assert [r["key"] for r in out["results"]] == ["exact", "learned-pca", "cluster-centroid"]
    for r in out["results"]:
        assert 0 <= r["table"]["recall"] <= 1 and r["table"]["qps"] > 0
        assert r["curve"] and all(0 <= p["recall"] <= 1 for p in r["curve"])
    cluster = out["results"][2]
    # The sweep covers the effort knob, and recall grows with it.
    probes = [p["effort"]["n_probe"] for p in cluster["curve"]]
    assert len(probes) > 1
    recalls = [p["recall"] for p in sorted(cluster["curve"], key=lambda p: p["effort"]["n_probe"])]
    assert recalls == sorted(recalls)


def test_embedding_like_data_look_like_model_outputs():
    X, topic = make_embedding_like(3000, 64, n_topics=50, random_state=0)
    assert X.shape == (3000, 64) and X.dtype == np.float32 and topic.shape == (3000,)
    assert_array_equal(X, make_embedding_like(3000, 64, n_topics=50, random_state=0)[0])
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1, rtol=1e-5)
    # The shared direction: random pairs have positive cosine similarity.
    rng = np.random.RandomState(0)
    pairs = rng.randint(0, 3000, size=(2000, 2))
    assert 0.05 < (X[pairs[:, 0]] * X[pairs[:, 1]]).sum(1).mean() < 0.5
    # Topics: a row's nearest other row mostly shares its topic.
    G = X @ X.T
    np.fill_diagonal(G, -np.inf)
    assert (topic[G.argmax(1)] == topic).mean() > 0.8
    # A decaying spectrum: the first eighth of the components hold far more
    # than an eighth of the variance, but not all of it.
    var = np.linalg.svd(X - X.mean(0), compute_uv=False) ** 2
    assert 0.3 < var[:8].sum() / var.sum() < 0.9


def test_main_on_embedding_like_data(monkeypatch, capsys):
    monkeypatch.setattr(_cli, "_EMBEDDING_LIKE_TRAIN", 1500)
    args = ["--dataset", "embedding-like", "--n-queries", "50", "--json",
            "--estimators", "learned-pca"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "embedding-like" and out["n_train"] == 1500
    assert out["n_queries"] == 50


def test_main_on_an_npz_file_with_a_plot(tmp_path, rng, capsys):
    pytest.importorskip("matplotlib")
    data = tmp_path / "data.npz"
    np.savez(data, train=rng.normal(size=(300, 8)), test=rng.normal(size=(20, 8)))
    png = tmp_path / "curves.png"
    assert main(["--data", str(data), "--plot", str(png), "--json", *FAST]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == str(data) and out["n_train"] == 300 and out["n_queries"] == 20
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("peer", ["hnswlib", "faiss-ivf", "pynndescent"])
def test_peers_are_measured_against_the_same_reference(peer, capsys):
    from skknn._compare import methods

    if not methods()[peer].available():
        pytest.skip(f"{peer} not installed")
    assert main(["--n-queries", "50", "--json", "--estimators", peer]) == 0
    result = json.loads(capsys.readouterr().out)["results"][1]
    assert result["key"] == peer and result["table"]["recall"] > 0.8


def _bad_npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"train": np.ones((5, 3))}, "no array named 'test'"),
        ({"train": np.ones(5), "test": np.ones((2, 5))}, "'train' must be a non-empty 2-D"),
        ({"train": np.ones((5, 3)), "test": np.ones((2, 4))}, "'train' has 3 features"),
        ({"train": np.full((5, 3), np.nan), "test": np.ones((2, 3))}, "NaN or infinity"),
        ({"train": np.array([["a"]]), "test": np.ones((2, 3))}, "must hold real numbers"),
    ],
)
def test_bad_npz_files_are_clear_errors(tmp_path, arrays, message, capsys):
    assert main(["--data", _bad_npz(tmp_path, **arrays)]) == 1
    assert message in capsys.readouterr().err


def test_unreadable_files_are_clear_errors(tmp_path, capsys):
    text = tmp_path / "notes.npz"
    text.write_text("not numpy")
    assert main(["--data", str(text)]) == 1
    assert "not a readable .npz file" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.npz"
    np.savez(corrupt, train=np.ones((5, 3)), test=np.ones((2, 3)))
    corrupt.write_bytes(corrupt.read_bytes()[:-40])
    assert main(["--data", str(corrupt)]) == 1
    assert "not a readable .npz file" in capsys.readouterr().err
    single = tmp_path / "single.npy"
    np.save(single, np.ones((5, 3)))
    assert main(["--data", str(single)]) == 1
    assert "not an .npz archive" in capsys.readouterr().err
    huge = _bad_npz(tmp_path, train=np.full((5, 3), 1e300), test=np.ones((2, 3)))
    assert main(["--data", huge]) == 1
    assert "too large for float32" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "absent.npz")]) == 1
    assert "absent.npz" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-k", "0"], "must be a positive integer"),
        (["-k", "ten"], "must be a positive integer"),
        (["--dataset", "mnist"], "invalid choice"),
        (["--estimators", "annoy"], "invalid choice"),
        (["--target-recall", "2"], "--target-recall must be in"),
        (["--n-queries", "1795"], "leaves too few"),
    ],
)
def test_bad_arguments_exit_non_zero_with_a_message(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code != 0
    assert message in capsys.readouterr().err


def test_a_method_failing_on_the_data_is_reported_and_skipped(monkeypatch, capsys):
    from skknn import _compare

    def broken_fit(self, X, args):
        raise RuntimeError("index build failed")

    monkeypatch.setattr(_compare._SkknnMethod, "fit", broken_fit)
    assert main(FAST) == 1  # exact search is the reference: nothing to compare against
    assert "NearestNeighbors (exact, brute) failed: RuntimeError" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.setattr(_compare._Hnswlib, "available", lambda self: True)
    monkeypatch.setattr(_compare._Hnswlib, "fit", broken_fit)
    assert main(["--estimators", "hnswlib", "learned-pca"]) == 0
    captured = capsys.readouterr()
    assert "hnswlib HNSW (M=16) failed, skipped: RuntimeError: index build failed" in captured.err
    assert "LearnedNeighbors (PCA)" in captured.out and "hnswlib" not in captured.out


def test_default_digits_run_leaves_out_the_slow_starting_methods():
    from skknn._cli import _chosen_methods, _parser

    def keys(argv):
        chosen, note = _chosen_methods(_parser().parse_args(argv), lambda message: None)
        return [m.key for m in chosen], note

    default, note = keys([])
    assert default[0] == "exact"
    assert {"learned-ae", "cluster-mlp", "cluster-centroid"} <= set(default)
    assert "pynndescent" not in default and "learned-ae-nnd" not in default
    assert "--estimators" in note
    named, note = keys(["--estimators", "pynndescent", "learned-ae-nnd"])
    assert named == ["exact", "pynndescent", "learned-ae-nnd"] and note is None
    fashion, note = keys(["--dataset", "fashion-mnist"])
    assert "learned-ae-nnd" in fashion and note is None


def test_missing_peer_requested_is_a_clear_error(monkeypatch, capsys):
    from skknn import _compare

    monkeypatch.setattr(_compare._Hnswlib, "requires", ("no_such_module_xyz", "hnswlib"))
    assert main(["--estimators", "hnswlib"]) == 1
    assert "pip install hnswlib" in capsys.readouterr().err


def test_missing_data_is_a_message_not_a_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "skknn", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert out.returncode == 1
    assert "error:" in out.stderr and "Traceback" not in out.stderr


# Runs each example as a script (``__main__``, its own globals and warnings
# filters, figures closed after it) and reports those that raised.
_RUN_EXAMPLES = """
import runpy, sys, traceback, warnings
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
failed = []
for path in sys.argv[1:]:
    try:
        with warnings.catch_warnings():
            runpy.run_path(path, run_name="__main__")
    except BaseException:
        failed.append(path)
        traceback.print_exc()
    plt.close("all")
print("FAILED:", failed)
sys.exit(1 if failed else 0)
"""


def test_examples_run():
    # One process for all the examples: a process of its own pays ~5 s of
    # imports (scikit-learn, Keras, JAX, matplotlib) per example.
    examples = sorted((ROOT / "examples").glob("*.py"))
    assert len(examples) >= 6
    out = subprocess.run([sys.executable, "-c", _RUN_EXAMPLES, *map(str, examples)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-5000:]
    assert "FAILED: []" in out.stdout
