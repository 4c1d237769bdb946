"""Dataset loading for the normlab lab: MNIST, Fashion-MNIST, CIFAR-10, digits, synthetic.

`load_dataset(name)` returns a `Dataset` of float32 images in [0, 1], channels-last,
with int64 labels. Downloadable datasets are read from the `data_dir` argument where
given (files in it or in `<data_dir>/<name>/`; nothing else is searched), else from:

1. `$NORMLAB_DATA_DIR` (same rule),
2. the Keras cache `$KERAS_HOME/datasets` or `~/.keras/datasets` (`mnist.npz`,
   `fashion-mnist/`, the CIFAR-10 `.tar.gz` archive; extracted folders are not used
   because they cannot be checked against a published checksum),
3. the normlab cache `$XDG_CACHE_HOME/normlab/<name>` or `~/.cache/normlab/<name>`,
   where missing files are downloaded (temp file -> SHA-256 check -> rename).

Every file is checked against its pinned SHA-256 before it is parsed. A file that
fails the check is never used and never silently skipped in favour of another copy:
it raises `DatasetError` naming the file, both digests and the fix. `digits`
(bundled with scikit-learn) and `synthetic` (generated) never touch the network.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normlab.lab import parsers
from normlab.lab.datafiles import SPECS, Format, Spec
from normlab.lab.errors import FOLDER, empty_value, require
from normlab.lab.experiments import DATASETS, dataset_key
from normlab.lab.parsers import DatasetError

_TIMEOUT_SECONDS = 30.0


class DatasetNotFound(DatasetError):
    """No copy of a dataset was found and none could be downloaded (a checksum mismatch is not this)."""

    reason: str = ""  # why: "download failed: ..." or "download=False"


@dataclass(frozen=True)
class Dataset:
    """Train/test images (float32 in [0, 1], shape (N, H, W, C)) with int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. `(28, 28, 1)` for MNIST."""
        return tuple(int(d) for d in self.x_train.shape[1:])


_NAMES = tuple(DATASETS)


def available_datasets() -> list[str]:
    """Names accepted by `load_dataset`."""
    return list(_NAMES)


def locate(name: str, data_dir: str | os.PathLike[str] | None = None, *, verify: bool = False) -> str | None:
    """Where `load_dataset` would read the dataset from, without parsing or downloading it.

    Returns a description ("data_dir: /path", "bundled", ...), or None when no complete
    copy is found (so loading would download it, or with ``data_dir`` raise). With
    ``verify``, the files found are checked against their pinned SHA-256 (DatasetError
    where one differs), as a load would.

    Example:
        >>> from normlab.lab.data import locate
        >>> locate("digits")
        'bundled with scikit-learn'
    """
    key = dataset_key(name)
    if key in ("digits", "synthetic"):
        return "bundled with scikit-learn" if key == "digits" else "generated"
    if key not in SPECS:
        raise DatasetError(f"Unknown dataset. Valid names: {', '.join(_NAMES)}. "
                           f"Received: name={name!r}.")
    for place in _searched(_places(key, SPECS[key], data_dir), data_dir):
        if all(p.is_file() for p in place.paths()):
            for path in place.paths() if verify else ():
                _verify(path, place, key)
            return f"{place.label}: {place.directory}"
    return None


def _searched(places: list[_Place], data_dir: object) -> list[_Place]:
    """The places a load reads: a folder given alone (another copy would hide a wrong path)."""
    return [p for p in places if p.label == "data_dir"] if data_dir is not None else places


def load_dataset(name: str, *, data_dir: str | os.PathLike[str] | None = None,
                 download: bool = True, progress: bool = True) -> Dataset:
    """Load a dataset by name; see the module docstring for where files are looked up.

    Args:
        name: one of `available_datasets()` (`-` and `_` are interchangeable).
        data_dir: folder holding the official files, directly or in `<name>/`.
            Ignored by `digits` and `synthetic`. Default: None.
        download: download into the normlab cache when no copy is found. Default: True.
        progress: show a progress bar while downloading. Default: True.

    Example:
        >>> from normlab.lab.data import load_dataset
        >>> load_dataset("digits").input_shape
        (8, 8, 1)
    """
    key = dataset_key(name)
    if key == "digits":
        return _load_digits()
    if key == "synthetic":
        return _load_synthetic()
    if key not in SPECS:
        raise DatasetError(f"Unknown dataset. Valid names: {', '.join(_NAMES)}. "
                           f"Received: name={name!r}.")
    check_data_dir(key, data_dir)
    return _load_remote(key, data_dir, download, progress)


def check_data_dir(name: str, data_dir: str | os.PathLike[str] | None) -> None:
    """Raises DatasetError if ``data_dir`` is given but is not a folder (or is empty: not "not given")."""
    if data_dir is not None and not str(data_dir):
        raise DatasetError(empty_value("data_dir", FOLDER, f"Pass the folder that holds the {name} files."))
    path = None if data_dir is None else Path(data_dir).expanduser()
    if path is not None and not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"The data directory {what}. Received: data_dir="
                           f"{str(data_dir)!r}. Pass the folder that holds the {name} files.")


# ---------------------------------------------------------------- lookup and download


@dataclass(frozen=True)
class _Place:
    """One directory to look in, the file set expected there, and how to name it."""

    label: str
    directory: Path
    fmt: Format

    def paths(self) -> list[Path]:
        return [self.directory / f for f in self.fmt.files]


def _keras_datasets_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser() / "datasets"


def _normlab_cache_dir(name: str) -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "normlab" / name


def _places(name: str, spec: Spec, data_dir: str | os.PathLike[str] | None) -> list[_Place]:
    """Every (directory, file set) to try, in lookup order; the normlab cache is last."""
    places = []
    for label, root in (("data_dir", data_dir),
                        ("NORMLAB_DATA_DIR", os.environ.get("NORMLAB_DATA_DIR"))):
        if root:
            root = Path(root).expanduser()
            places += [_Place(label, d, f) for d in (root, root / name) for f in spec.formats]
    places += [_Place("Keras cache", _keras_datasets_dir() / sub, f) for sub, f in spec.keras]
    return places + [_Place("normlab cache", _normlab_cache_dir(name), spec.download)]


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """SHA-256 of a file, hashed in chunks and remembered per (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def _verify(path: Path, place: _Place, name: str) -> None:
    """Raise DatasetError unless the file's SHA-256 is the pinned one of ``name``'s file."""
    expected, actual = place.fmt.sha256[path.name], _sha256(path)
    if actual == expected:
        return
    other = next((n for n, spec in SPECS.items() for f in spec.formats if f.sha256.get(path.name) == actual), None)
    if other is not None:
        what = (f"It is the official {other} file, not {name}'s: point --data-dir at the {name} files, "
                f"or pass --dataset {other}.")
    elif place.label == "data_dir":  # a folder given is used alone: nothing is fetched in its place
        what = "The file is corrupt, truncated or not the official release. Replace it with the official file."
    else:
        what = ("The file is corrupt, truncated or not the official release, so it was not used. Delete it "
                "(or replace it with the official file) and run again; if no other copy is found, normlab "
                "downloads a fresh one into its cache.")
    raise DatasetError(f"Checksum mismatch for {path.name} (found in the {place.label}): expected SHA-256 "
                       f"{expected}, actual {actual}. Received: path='{path}'. {what}")


def _fetch(url: str, dest: Path, progress: bool) -> None:
    """Download `url` into `dest`, with a rich progress bar unless `progress` is False."""
    import contextlib

    request = urllib.request.Request(url, headers={"User-Agent": "normlab"})
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        bar = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                       console=Console(stderr=True), transient=True)
    with urllib.request.urlopen(request, timeout=_TIMEOUT_SECONDS) as response, \
            open(dest, "wb") as out, (bar or contextlib.nullcontext()):
        total = int(response.headers.get("Content-Length") or 0) or None
        task = bar.add_task(url.rsplit("/", 1)[-1], total=total) if bar is not None else None
        while chunk := response.read(1 << 16):
            out.write(chunk)
            if bar is not None and task is not None:
                bar.advance(task, len(chunk))


class _DownloadFailed(Exception):
    """Internal: no mirror delivered a verified copy of a file."""


def _download_file(mirrors: tuple[str, ...], fname: str, expected: str, dest_dir: Path,
                   progress: bool) -> None:
    """Fetch into a temp file, verify, then rename into place; try mirrors in order."""
    problems = []
    for url in (mirror + fname for mirror in mirrors):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{fname}.", suffix=".part", dir=dest_dir)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(url, tmp, progress)
            actual = _sha256(tmp)
            if actual == expected:
                os.replace(tmp, dest_dir / fname)
                return
            problems.append(f"{url}: checksum mismatch (expected {expected}, actual {actual})")
        except (OSError, http.client.HTTPException) as exc:
            problems.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise _DownloadFailed("; ".join(problems))


def _describe(place: _Place) -> str:
    single = len(place.fmt.files) == 1 and place.label == "Keras cache"
    return f"{place.label}: {place.directory / place.fmt.files[0] if single else place.directory}"


def _not_found(name: str, spec: Spec, places: list[_Place], data_dir: object,
               reason: str) -> DatasetError:
    """The error for 'no copy found and none could be downloaded', with every option (one line)."""
    searched = [] if data_dir else ["data_dir: not given"]
    searched += [_describe(p) for p in places if p.label == "data_dir"]
    searched += [] if os.environ.get("NORMLAB_DATA_DIR") or data_dir else ["NORMLAB_DATA_DIR: not set"]
    searched += [_describe(p) for p in places if p.label != "data_dir"]
    partial = []
    for place in places:
        present = [p for p in place.paths() if p.is_file()]
        if present and len(present) < len(place.paths()):
            missing = [p.name for p in place.paths() if not p.is_file()]
            partial.append(f"{place.directory} has {len(present)} of {len(place.paths())} "
                           f"files, missing {', '.join(missing)}")
    sub, fmt = spec.keras[0]
    what = fmt.files[0] if len(fmt.files) == 1 else "the files"
    error = DatasetNotFound(
        f"Dataset {name!r} was not found{'' if data_dir is not None else ' and could not be downloaded'} ({reason}). "
        + (f"Incomplete: {'; '.join(dict.fromkeys(partial))}. " if partial else "")
        + f"Searched: {'; '.join(dict.fromkeys(searched))}. "
        f"Files needed: {' or '.join('[' + ', '.join(f.files) + ']' for f in spec.formats)}. "
        f"Received: data_dir={None if data_dir is None else str(data_dir)!r}. Options: "
        + (f"put the official files in that folder (or its {name}/ subfolder); or drop --data-dir to "
           "search $NORMLAB_DATA_DIR and the Keras cache, then download; " if data_dir is not None else
           "pass --data-dir DIR (data_dir=DIR) with the official files; set NORMLAB_DATA_DIR=DIR; "
           f"put {what} in the Keras cache: {_keras_datasets_dir() / sub}/; ")
        + "or use --dataset digits, which needs no download.")
    error.reason = reason
    return error


def _load_remote(name: str, data_dir: str | os.PathLike[str] | None, download: bool,
                 progress: bool) -> Dataset:
    """The first complete file set found (in ``data_dir`` alone where given), or a download."""
    spec = SPECS[name]
    places = _places(name, spec, data_dir)
    for place in _searched(places, data_dir):
        if all(p.is_file() for p in place.paths()):
            return _load_place(name, place)
    if data_dir is not None:
        raise _not_found(name, spec, _searched(places, data_dir), data_dir,
                         "not in data_dir, a folder given is used alone: nothing else is searched or downloaded")
    if not download:
        raise _not_found(name, spec, places, data_dir, "download=False")
    cache = places[-1]
    try:
        cache.directory.mkdir(parents=True, exist_ok=True)
        for fname, expected in cache.fmt.sha256.items():
            if not (cache.directory / fname).is_file():
                _download_file(spec.mirrors, fname, expected, cache.directory, progress)
    except (_DownloadFailed, OSError) as exc:
        raise _not_found(name, spec, places, data_dir, f"download failed: {exc}") from None
    return _load_place(name, cache)


def _load_place(name: str, place: _Place) -> Dataset:
    """Verify every file of the set, then parse it."""
    paths = place.paths()
    for path in paths:
        _verify(path, place, name)
    x_train, y_train, x_test, y_test = parsers.PARSERS[place.fmt.kind](paths)
    source = str(paths[0] if len(paths) == 1 else place.directory)
    return _finish(name, x_train, y_train, x_test, y_test, 10, source)


def _finish(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
            y_test: np.ndarray, num_classes: int, source: str, scale: float = 255.0) -> Dataset:
    """Scale images to float32 in [0, 1], add a channel axis if missing, check the labels."""
    def images(x: np.ndarray) -> np.ndarray:
        x = np.multiply(x, np.float32(1.0 / scale), dtype=np.float32)
        return x[..., None] if x.ndim == 3 else x

    def labels(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.int64).reshape(-1)
        if len(y) != len(x) or (y.size and (y.min() < 0 or y.max() >= num_classes)):
            raise DatasetError(f"{name}: {len(y)} labels for {len(x)} images; expected one label "
                               f"in [0, {num_classes}) per image. Received: source='{source}'. "
                               f"Replace the files with the official ones.")
        return y

    return Dataset(name, images(x_train), labels(y_train, x_train), images(x_test),
                   labels(y_test, x_test), num_classes, source)


# ------------------------------------------------------------------- offline datasets


def _load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (0..16); fixed permutation (seed 0), last 20% test."""
    require("sklearn")  # a clear error naming the lab extra if scikit-learn is missing
    return _finish(*parsers.digits(), 10, "scikit-learn (bundled)", scale=16.0)


def _load_synthetic(num_train: int = 500, num_test: int = 100) -> Dataset:
    """10 balanced classes of 28x28x1 images: a fixed blocky pattern per class plus noise."""
    return _finish(*parsers.synthetic(num_train, num_test), 10, "generated (seed 0)", scale=1.0)
