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

from skknn._cli import main
from skknn.datasets import load_fashion_mnist, read_idx

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


def test_main_on_digits_prints_a_table(capsys):
    assert main(["-k", "5", "--n-queries", "100"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "recall@5" in lines[0] and "queries/s" in lines[0]
    assert any(line.startswith("LearnedNeighbors (autoencoder-32)") for line in lines)
    exact_row = next(line for line in lines if line.startswith("NearestNeighbors"))
    assert "1.000" in exact_row and "1.00x" in exact_row
    assert "[skknn] fitting" in captured.err


def test_main_json_on_fashion_layout(tiny_fashion, capsys):
    folder, _, _ = tiny_fashion
    args = ["--dataset", "fashion-mnist", "--data-dir", str(folder), "-k", "3", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_train"] == 60 and out["n_queries"] == 12 and out["k"] == 3
    learned = [r for r in out["results"] if r["method"].startswith("LearnedNeighbors")]
    assert learned and all(0 <= r["recall"] <= 1 for r in learned)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-k", "0"], "must be a positive integer"),
        (["--dataset", "mnist"], "invalid choice"),
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


def test_missing_data_is_a_message_not_a_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "skknn", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert out.returncode == 1
    assert "error:" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("script", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_examples_run(script):
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True, timeout=300)
