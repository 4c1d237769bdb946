"""File formats of the lab's datasets, and the two offline datasets, as raw arrays.

Parsers take the (already checksum-verified) files of one dataset and return
``(x_train, y_train, x_test, y_test)`` as stored (uint8 images); scaling and
checks are :mod:`normlab.lab.data`'s. Malformed files raise :class:`DatasetError`
naming the file and the fix.
"""

from __future__ import annotations

import gzip
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from normlab.lab.errors import LabError


class DatasetError(LabError, RuntimeError):
    """A dataset cannot be loaded: unknown name, missing, corrupt or unreadable files."""


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read a gzip IDX file: magic 2051 = images (N, rows, cols), 2049 = labels (N,)."""
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"Cannot decompress {path.name}: {exc}. Received: path='{path}'. "
                           f"Replace it with the official gzip file.") from None
    ndim = 3 if magic == 2051 else 1
    offset = 4 + 4 * ndim  # big-endian uint32: magic, then one count per dimension
    header = [int(v) for v in np.frombuffer(raw[:offset], ">u4")] if len(raw) >= offset else [0]
    if header[0] != magic:
        raise DatasetError(f"{path.name} is not an IDX {'image' if ndim == 3 else 'label'} "
                           f"file: magic number {header[0]}, expected {magic}. "
                           f"Received: path='{path}'. Replace it with the official file.")
    dims, expected = tuple(header[1:]), offset + int(np.prod(header[1:]))
    if len(raw) != expected:
        raise DatasetError(f"{path.name}: the header announces shape {dims} ({expected} bytes) "
                           f"but the file holds {len(raw)} bytes. Received: path='{path}'. "
                           f"Replace it with the official file.")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _parse_idx(paths: list[Path]) -> tuple[np.ndarray, ...]:
    return tuple(_read_idx(p, magic) for p, magic in zip(paths, (2051, 2049, 2051, 2049)))


def _parse_npz(paths: list[Path]) -> tuple[np.ndarray, ...]:
    try:
        with np.load(paths[0], allow_pickle=False) as f:
            return tuple(f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    except (KeyError, ValueError, OSError) as exc:
        raise DatasetError(f"Cannot read {paths[0].name}: {exc}. Received: path='{paths[0]}'. "
                           f"Replace it with the Keras mnist.npz.") from None


def _parse_cifar(paths: list[Path]) -> tuple[np.ndarray, ...]:
    """Read the pickled batches from the tar.gz (unpickling is safe: the file was verified)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {}
    with tarfile.open(paths[0], "r:gz") as tar:
        for member in tar:
            base = member.name.rsplit("/", 1)[-1]
            blob = tar.extractfile(member) if member.isfile() and base in names else None
            if blob is not None:
                batches[base] = pickle.load(blob, encoding="bytes")
    if missing := [n for n in names if n not in batches]:
        raise DatasetError(f"{paths[0].name} lacks the batches {missing}. "
                           f"Received: path='{paths[0]}'. Replace it with the official archive.")

    def stack(keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([np.asarray(batches[k][b"data"], np.uint8) for k in keys])
        y = np.concatenate([np.asarray(batches[k][b"labels"]) for k in keys])
        return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y

    return (*stack(names[:5]), *stack(names[5:]))


PARSERS = {"idx": _parse_idx, "npz": _parse_npz, "cifar": _parse_cifar}


# ------------------------------------------------------------------- offline datasets


def digits() -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (0..16): fixed permutation (seed 0), last 20% test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.target))
    x, y = bunch.images[order], bunch.target[order]
    split = len(y) - round(0.2 * len(y))
    return "digits", x[:split], y[:split], x[split:], y[split:]


def synthetic(num_train: int = 500,
              num_test: int = 100) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """10 balanced classes of 28x28 images in [0, 1]: a fixed blocky pattern per class plus noise."""
    rng = np.random.default_rng(0)
    patterns = np.kron(rng.random((10, 7, 7)) > 0.5, np.ones((4, 4)))
    y = np.concatenate([rng.permutation(np.arange(n) % 10) for n in (num_train, num_test)])
    x = np.clip(0.8 * patterns[y] + rng.normal(0.1, 0.15, (len(y), 28, 28)), 0.0, 1.0)
    return "synthetic", x[:num_train], y[:num_train], x[num_train:], y[num_train:]
