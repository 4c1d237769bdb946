"""Picking an installed Keras backend when none is configured."""

import os
import subprocess
import sys

import pytest

from normlab import _backend


def test_configured_backend_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert _backend.configured_backend() == "jax"
    monkeypatch.delenv("KERAS_BACKEND")
    assert _backend.configured_backend() is None
    (tmp_path / "keras.json").write_text('{"backend": "torch"}')
    assert _backend.configured_backend() == "torch"


def test_torch_only_user_gets_torch(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "installed_backends", lambda: ["torch"])
    monkeypatch.setattr(sys, "modules", {k: v for k, v in sys.modules.items() if k != "keras"})
    assert _backend.choose_default_backend() == "torch"
    assert os.environ["KERAS_BACKEND"] == "torch"


def test_tensorflow_installed_keeps_keras_default(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "installed_backends", lambda: ["tensorflow", "torch"])
    monkeypatch.setattr(sys, "modules", {k: v for k, v in sys.modules.items() if k != "keras"})
    assert _backend.choose_default_backend() is None
    assert "KERAS_BACKEND" not in os.environ


@pytest.mark.once
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_import_normlab_respects_keras_backend(backend):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-c", "import normlab, keras; print(keras.backend.backend())"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.stdout.strip().splitlines()[-1] == backend, out.stderr[-2000:]
