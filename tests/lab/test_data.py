"""Tests for normlab.lab.data. No test touches the network or the user's real caches."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from normlab.lab import data, datafiles

MNIST_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"
IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
needs_mnist = pytest.mark.skipif(
    not all((MNIST_DIR / n).is_file() for n in IDX_NAMES),
    reason=f"real MNIST gz files not found in {MNIST_DIR}")
REAL_FETCH = data._fetch


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _idx_bytes(magic: int, array: np.ndarray) -> bytes:
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def _write_tiny_idx(folder: Path, n_train: int = 6, n_test: int = 4) -> dict[str, str]:
    """Write a small valid IDX set; return file name -> sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
              rng.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10)
    for name, magic, array in zip(IDX_NAMES, (2051, 2049, 2051, 2049), arrays):
        (folder / name).write_bytes(_idx_bytes(magic, array))
    return {name: _sha(folder / name) for name in IDX_NAMES}


def _pin(monkeypatch: pytest.MonkeyPatch, fmt: datafiles.Format, hashes: dict[str, str]) -> None:
    for name, digest in hashes.items():
        monkeypatch.setitem(fmt.sha256, name, digest)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake HOME and caches; any download attempt not set up by a test fails it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.delenv("NORMLAB_DATA_DIR", raising=False)

    def no_network(url: str, dest: Path, progress: bool) -> None:
        pytest.fail(f"unexpected download of {url}")

    monkeypatch.setattr(data, "_fetch", no_network)
    return tmp_path


def _cache_dir(tmp_path: Path, name: str = "mnist") -> Path:
    return tmp_path / "xdg-cache" / "normlab" / name


# ------------------------------------------------------------------------ real MNIST


@needs_mnist
def test_real_mnist_from_data_dir() -> None:
    ds = data.load_dataset("mnist", data_dir=MNIST_DIR, progress=False)
    assert ds.name == "mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.input_shape == (28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert ds.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(ds.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                               974, 1009]
    assert ds.source == str(MNIST_DIR)


@needs_mnist
def test_env_var_with_dataset_subfolder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(MNIST_DIR.parent))  # finds <dir>/mnist/
    ds = data.load_dataset("mnist")
    assert ds.source == str(MNIST_DIR) and ds.y_train.shape == (60000,)


@needs_mnist
def test_corrupt_file_is_rejected_with_both_hashes(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = isolated / "data"
    folder.mkdir()
    for name in IDX_NAMES:
        shutil.copyfile(MNIST_DIR / name, folder / name)
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(bad.read_bytes())
    raw[100] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(data.DatasetError) as info:
        data.load_dataset("mnist", data_dir=folder)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and str(bad) in message
    assert "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6" in message
    assert _sha(bad) in message
    # A folder given is used alone: nothing is downloaded in its place.
    assert "Replace it with the official file" in message and "download" not in message
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(folder))  # found by a search: deleting it lets a download replace it
    with pytest.raises(data.DatasetError, match="Delete it .* downloads a fresh one"):
        data.load_dataset("mnist")


@needs_mnist
def test_another_datasets_files_are_named_as_such_in_a_dry_run_too(isolated: Path) -> None:
    """MNIST's files given for Fashion-MNIST (the same file names): the error said the official
    MNIST file was corrupt, to delete it, and that a download would follow (none does for a
    folder given); a dry run found nothing wrong."""
    folder = isolated / "data"
    folder.mkdir()
    for name in IDX_NAMES:
        shutil.copyfile(MNIST_DIR / name, folder / name)
    expected = ("It is the official mnist file, not fashion_mnist's: point --data-dir at the "
                "fashion_mnist files, or pass --dataset mnist.")
    with pytest.raises(data.DatasetError, match=re.escape(expected)):
        data.load_dataset("fashion_mnist", data_dir=folder)
    assert data.locate("fashion_mnist", folder) == f"data_dir: {folder}"  # names only
    with pytest.raises(data.DatasetError, match=re.escape(expected)):
        data.locate("fashion_mnist", folder, verify=True)
    assert data.locate("mnist", folder, verify=True) == f"data_dir: {folder}"


@needs_mnist
def test_simulated_download_ends_in_verified_cache(isolated: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    urls = []

    def fake_fetch(url: str, dest: Path, progress: bool) -> None:
        urls.append(url)
        if "googleapis" in url:  # first mirror is down, second one serves
            raise urllib.error.URLError("first mirror down")
        shutil.copyfile(MNIST_DIR / url.rsplit("/", 1)[-1], dest)

    monkeypatch.setattr(data, "_fetch", fake_fetch)
    ds = data.load_dataset("mnist", progress=False)
    cache = _cache_dir(isolated)
    assert ds.source == str(cache) and ds.x_test.shape == (10000, 28, 28, 1)
    assert sorted(p.name for p in cache.iterdir()) == sorted(IDX_NAMES)  # no temp files left
    for name in IDX_NAMES:
        assert _sha(cache / name) == datafiles.MNIST_IDX.sha256[name]
    assert len(urls) == 8  # every file: first mirror, then the second
    assert urls[1] == "https://ossci-datasets.s3.amazonaws.com/mnist/" + IDX_NAMES[0]


# ------------------------------------------------------------------ download failures


def test_download_of_wrong_bytes_leaves_nothing(isolated: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_fetch", lambda url, dest, progress: dest.write_bytes(b"<html>"))
    with pytest.raises(data.DatasetError) as info:
        data.load_dataset("mnist", progress=False)
    assert "checksum mismatch" in str(info.value)
    assert list(_cache_dir(isolated).iterdir()) == []


@pytest.mark.parametrize("error", [urllib.error.URLError("no route to host"),
                                   TimeoutError("timed out")])
def test_offline_error_lists_places_files_and_options(isolated: Path, error: OSError,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(data, "_fetch", REAL_FETCH)  # exercise the real downloader ...
    monkeypatch.setattr(data.urllib.request, "urlopen", offline)  # ... without a network
    with pytest.raises(data.DatasetError) as info:
        data.load_dataset("mnist", progress=False)
    message = str(info.value)
    for expected in ("data_dir: not given", "NORMLAB_DATA_DIR: not set", str(error),
                     str(isolated / "home" / ".keras" / "datasets" / "mnist.npz"),
                     str(_cache_dir(isolated)), *IDX_NAMES, "--data-dir DIR",
                     "set NORMLAB_DATA_DIR", "put mnist.npz in the Keras cache",
                     "--dataset digits"):
        assert expected in message
    assert list(_cache_dir(isolated).iterdir()) == []


def test_download_false_does_not_fetch(isolated: Path) -> None:
    with pytest.raises(data.DatasetError, match=r"download=False"):
        data.load_dataset("cifar10", download=False)


def test_real_fetch_reads_file_url(isolated: Path) -> None:
    source = isolated / "blob.bin"
    source.write_bytes(os.urandom(200_000))
    for progress in (False, True):
        dest = isolated / f"copy-{progress}.bin"
        REAL_FETCH(source.as_uri(), dest, progress)
        assert dest.read_bytes() == source.read_bytes()


# ------------------------------------------------------------ formats and lookup order


def test_tiny_idx_set_loads_when_pinned(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _pin(monkeypatch, datafiles.MNIST_IDX, _write_tiny_idx(isolated / "d" / "mnist"))
    ds = data.load_dataset("mnist", data_dir=isolated / "d")
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.y_test.tolist() == [0, 1, 2, 3]


def _rewrite(path: Path, edit) -> None:
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes()))))


@pytest.mark.parametrize("corrupt, match", [
    (lambda f: f.write_bytes(_idx_bytes(2049, np.zeros((6, 28, 28)))), "magic number 2049"),
    (lambda f: _rewrite(f, lambda raw: raw[:10]), "magic number 0"),  # header cut short
    (lambda f: _rewrite(f, lambda raw: raw[:-5]), "holds"),  # pixels cut short
    (lambda f: f.write_bytes(b"not gzip at all"), "Cannot decompress"),
])
def test_bad_idx_is_a_dataset_error(isolated: Path, monkeypatch: pytest.MonkeyPatch,
                                    corrupt, match: str) -> None:
    folder = isolated / "d"
    _write_tiny_idx(folder)
    corrupt(folder / IDX_NAMES[0])
    _pin(monkeypatch, datafiles.MNIST_IDX, {n: _sha(folder / n) for n in IDX_NAMES})
    with pytest.raises(data.DatasetError, match=match):
        data.load_dataset("mnist", data_dir=folder)


def test_label_count_mismatch_is_a_dataset_error(isolated: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder = isolated / "d"
    _write_tiny_idx(folder)
    (folder / IDX_NAMES[1]).write_bytes(_idx_bytes(2049, np.zeros(5)))
    _pin(monkeypatch, datafiles.MNIST_IDX, {n: _sha(folder / n) for n in IDX_NAMES})
    with pytest.raises(data.DatasetError, match="5 labels for 6 images"):
        data.load_dataset("mnist", data_dir=folder)


def _write_npz(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=np.full((3, 28, 28), 255, np.uint8), y_train=np.array([0, 1, 9]),
             x_test=np.zeros((2, 28, 28), np.uint8), y_test=np.array([4, 5]))


@pytest.mark.parametrize("keras_home", [None, "custom-keras"])
def test_keras_cache_npz(isolated: Path, monkeypatch: pytest.MonkeyPatch,
                         keras_home: str | None) -> None:
    root = isolated / "home" / ".keras"
    if keras_home:
        root = isolated / keras_home
        monkeypatch.setenv("KERAS_HOME", str(root))
    npz = root / "datasets" / "mnist.npz"
    _write_npz(npz)
    _pin(monkeypatch, datafiles.MNIST_NPZ, {"mnist.npz": _sha(npz)})
    ds = data.load_dataset("mnist")
    assert ds.source == str(npz) and ds.x_train.shape == (3, 28, 28, 1)
    assert ds.x_train.max() == 1.0 and ds.y_train.dtype == np.int64


def test_corrupt_keras_npz_is_reported_not_skipped(isolated: Path) -> None:
    npz = isolated / "home" / ".keras" / "datasets" / "mnist.npz"
    _write_npz(npz)  # real hash differs from the pinned one
    with pytest.raises(data.DatasetError, match=r"mnist\.npz \(found in the Keras cache\)"):
        data.load_dataset("mnist")  # the autouse fixture fails the test on any download


def test_fashion_from_keras_cache_folder(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = isolated / "home" / ".keras" / "datasets" / "fashion-mnist"
    _pin(monkeypatch, datafiles.FASHION_IDX, _write_tiny_idx(folder))
    ds = data.load_dataset("fashion-mnist")
    assert ds.name == "fashion_mnist" and ds.source == str(folder)


def test_data_dir_wins_over_env(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _pin(monkeypatch, datafiles.MNIST_IDX, _write_tiny_idx(isolated / "given"))
    env_dir = isolated / "env"
    env_dir.mkdir()
    for name in IDX_NAMES:
        (env_dir / name).write_bytes(b"garbage")  # would fail its checksum if looked at
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(env_dir))
    assert data.load_dataset("mnist", data_dir=isolated / "given").source == str(isolated / "given")
    with pytest.raises(data.DatasetError, match="Checksum mismatch"):
        data.load_dataset("mnist")


def test_lookup_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(isolated / "env"))
    monkeypatch.setenv("KERAS_HOME", str(isolated / "kh"))
    places = data._places("mnist", datafiles.SPECS["mnist"], isolated / "given")
    seen = list(dict.fromkeys((p.label, p.directory) for p in places))
    assert seen == [("data_dir", isolated / "given"), ("data_dir", isolated / "given" / "mnist"),
                    ("NORMLAB_DATA_DIR", isolated / "env"),
                    ("NORMLAB_DATA_DIR", isolated / "env" / "mnist"),
                    ("Keras cache", isolated / "kh" / "datasets"),
                    ("normlab cache", _cache_dir(isolated))]


def _cifar_tar(path: Path) -> None:
    """A tiny archive laid out like cifar-10-python.tar.gz: R=10, G=20, B=30 everywhere."""
    with tarfile.open(path, "w:gz") as tar:
        for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
            pixels = np.repeat(np.array([10, 20, 30], np.uint8), 1024)[None].repeat(2, 0)
            blob = pickle.dumps({b"data": pixels, b"labels": [i, 9]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_cifar_archive_is_parsed_channels_last(isolated: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    archive = isolated / "home" / ".keras" / "datasets" / "cifar-10-batches-py-target_archive"
    archive.parent.mkdir(parents=True)
    _cifar_tar(archive)
    _, keras3_fmt = datafiles.SPECS["cifar10"].keras[1]
    _pin(monkeypatch, keras3_fmt, {archive.name: _sha(archive)})
    ds = data.load_dataset("cifar10")
    assert ds.x_train.shape == (10, 32, 32, 3) and ds.x_test.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(ds.x_train[3, 5, 7], np.array([10, 20, 30]) / 255, rtol=1e-6)
    assert ds.y_train.tolist() == [0, 9, 1, 9, 2, 9, 3, 9, 4, 9] and ds.y_test.tolist() == [5, 9]


def test_hash_is_cached_per_path_size_and_mtime(isolated: Path) -> None:
    path = isolated / "f.bin"
    path.write_bytes(b"abc")
    assert data._sha256(path) == hashlib.sha256(b"abc").hexdigest()
    path.write_bytes(b"abcd")
    os.utime(path, ns=(1, 1))
    assert data._sha256(path) == hashlib.sha256(b"abcd").hexdigest()


# ------------------------------------------------------------- offline datasets, names


def test_digits_needs_no_network(isolated: Path) -> None:
    ds = data.load_dataset("digits", data_dir=isolated / "ignored")
    assert ds.x_train.shape == (1438, 8, 8, 1) and ds.x_test.shape == (359, 8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() == 1.0
    assert ds.source == "scikit-learn (bundled)"
    np.testing.assert_array_equal(ds.y_test, data.load_dataset("digits").y_test)


def test_synthetic_is_small_deterministic_and_balanced() -> None:
    ds, again = data.load_dataset("synthetic"), data.load_dataset("synthetic", data_dir="/nowhere")
    assert ds.x_train.shape == (500, 28, 28, 1) and ds.x_test.shape == (100, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() <= ds.x_train.max() <= 1.0
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    assert np.bincount(ds.y_test).tolist() == [10] * 10
    means = np.stack([ds.x_train[ds.y_train == c].mean(0) for c in range(10)])
    nearest = np.argmin(((ds.x_test[:, None] - means[None]) ** 2).sum((2, 3, 4)), axis=1)
    assert (nearest == ds.y_test).mean() > 0.9  # learnable: nearest class mean already works


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(data.DatasetError) as info:
        data.load_dataset("imagenet")
    assert "Received: name='imagenet'" in str(info.value)
    for name in data.available_datasets():
        assert name in str(info.value)


def test_an_empty_data_dir_is_refused_not_read_as_not_given(isolated: Path) -> None:
    """It said "Searched: data_dir: not given" beside "Received: data_dir=''"."""
    with pytest.raises(data.DatasetError, match=r"Invalid `data_dir`: expected a non-empty folder path \(an empty "
                                                r"one would be the current folder\)\. Received: data_dir=''\. "
                                                r"Pass the folder that holds the mnist files\."):
        data.load_dataset("mnist", data_dir="", download=False)


def test_missing_data_dir_is_reported(isolated: Path) -> None:
    with pytest.raises(data.DatasetError, match="Received: data_dir='.*nope'"):
        data.load_dataset("mnist", data_dir=isolated / "nope")


def test_available_datasets() -> None:
    assert data.available_datasets() == ["mnist", "fashion_mnist", "cifar10", "digits",
                                         "synthetic"]


def test_locate_reads_nothing_and_downloads_nothing(isolated: Path) -> None:
    assert data.locate("digits") == "bundled with scikit-learn"
    assert data.locate("mnist") is None  # would be downloaded (the fixture fails any fetch)
    _write_tiny_idx(isolated / "d" / "mnist")
    assert data.locate("mnist", isolated / "d") == f"data_dir: {isolated / 'd' / 'mnist'}"


def test_an_incomplete_set_names_the_missing_files(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = isolated / "d"
    _write_tiny_idx(folder)
    (folder / IDX_NAMES[3]).unlink()
    monkeypatch.setattr(data, "_fetch", lambda url, dest, progress: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(data.DatasetNotFound) as info:
        data.load_dataset("mnist", data_dir=folder, progress=False)
    message = str(info.value)
    assert f"{folder} has 3 of 4 files, missing t10k-labels-idx1-ubyte.gz" in message
    assert "\n" not in message and info.value.reason.startswith("not in data_dir")


def test_a_data_dir_given_is_used_alone(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder given without the files was completed from $NORMLAB_DATA_DIR, the caches or a
    download: a mistyped path trained on another copy, or reached the network."""
    _pin(monkeypatch, datafiles.MNIST_IDX, _write_tiny_idx(isolated / "env"))
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(isolated / "env"))
    fetched: list[str] = []
    monkeypatch.setattr(data, "_fetch", lambda url, dest, progress: fetched.append(url))
    (isolated / "given").mkdir()
    assert data.locate("mnist", isolated / "given") is None
    with pytest.raises(data.DatasetNotFound, match=r"a folder given is used alone.*Options: put the official "
                                                   r"files in that folder \(or its mnist/ subfolder\)"):
        data.load_dataset("mnist", data_dir=isolated / "given")
    assert fetched == [] and data.load_dataset("mnist").source == str(isolated / "env")
