"""The lab's tests never touch the network: every download attempt fails at once.

Tests that exercise the downloader patch ``normlab.lab.data._fetch`` (or
``urllib.request.urlopen``) themselves; this guard only makes sure that a test
which did not mean to download cannot (on a machine with a network it would
otherwise fetch MNIST into the user's real cache and train on it).
"""

import pytest

from normlab.lab import data


def _no_network(url, dest, progress):
    raise OSError(f"network disabled in the lab's tests (tried {url})")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setattr(data, "_fetch", _no_network)


@pytest.fixture
def no_datasets(tmp_path, monkeypatch):
    """No dataset anywhere: empty HOME and caches, no NORMLAB_DATA_DIR, no KERAS_HOME."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NORMLAB_DATA_DIR", raising=False)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    return tmp_path
