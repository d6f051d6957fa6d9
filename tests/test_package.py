"""Package-level promises: lazy imports and the Keras backend rule."""

import os
import subprocess
import sys

import pytest

HEAVY = ("keras", "jax", "pynndescent", "numba", "tensorflow", "torch", "dask", "distributed")


def _run(code, **env):
    environ = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, check=True
    )
    return out.stdout.strip()


def test_import_is_light():
    code = f"import sys, skknn; print([m for m in {HEAVY!r} if m in sys.modules])"
    assert _run(code) == "[]"


def test_keras_uses_jax_when_nothing_was_chosen():
    code = "from skknn._keras import import_keras; print(import_keras().backend.backend())"
    assert _run(code) == "jax"


def test_keras_keeps_the_backend_the_user_chose():
    # The numpy backend ships with Keras and needs no extra install.
    code = "from skknn._keras import import_keras; print(import_keras().backend.backend())"
    assert _run(code, KERAS_BACKEND="numpy") == "numpy"


def test_keras_keeps_an_already_imported_backend():
    code = (
        "import os; os.environ['KERAS_BACKEND'] = 'numpy'; import keras; "
        "del os.environ['KERAS_BACKEND']; "
        "from skknn._keras import import_keras; print(import_keras().backend.backend())"
    )
    assert _run(code) == "numpy"


@pytest.mark.parametrize("name", ["AutoencoderEmbedder", "LearnedNeighbors"])
def test_public_api(name):
    import skknn

    assert name in skknn.__all__ and hasattr(skknn, name)
