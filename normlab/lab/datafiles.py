"""The files of each downloadable dataset: their pinned SHA-256 and where they come from.

:mod:`normlab.lab.data` looks them up (``data_dir``, ``$NORMLAB_DATA_DIR``, the Keras
cache, the normlab cache), checks every file against its digest here before parsing it,
and downloads a missing one from the mirrors listed here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    """Files that together hold a dataset (in parser order) with their pinned SHA-256."""

    kind: str  # parser: "idx", "npz" or "cifar"
    sha256: dict[str, str]

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(self.sha256)


@dataclass(frozen=True)
class Spec:
    """Where a downloadable dataset may be found and where it is downloaded from."""

    formats: tuple[Format, ...]  # accepted in data_dir and $NORMLAB_DATA_DIR
    keras: tuple[tuple[str, Format], ...]  # (subfolder of the Keras cache, format)
    download: Format
    mirrors: tuple[str, ...]


IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MNIST_IDX = Format("idx", dict(zip(IDX_FILES, (
    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"))))
MNIST_NPZ = Format("npz", {
    "mnist.npz": "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"})
FASHION_IDX = Format("idx", dict(zip(IDX_FILES, (  # digests published by Zalando Research
    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"))))
CIFAR_SHA = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
CIFAR_TAR = Format("cifar", {"cifar-10-python.tar.gz": CIFAR_SHA})

SPECS: dict[str, Spec] = {
    "mnist": Spec((MNIST_IDX, MNIST_NPZ), (("", MNIST_NPZ),), MNIST_IDX, (
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/")),
    "fashion_mnist": Spec((FASHION_IDX,), (("fashion-mnist", FASHION_IDX),), FASHION_IDX, (
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",)),
    # In the Keras cache the archive has the Keras 3 name or the older tf.keras one.
    "cifar10": Spec((CIFAR_TAR,), (
        ("", CIFAR_TAR),
        ("", Format("cifar", {"cifar-10-batches-py-target_archive": CIFAR_SHA})),
        ("", Format("cifar", {"cifar-10-batches-py.tar.gz": CIFAR_SHA}))),
        CIFAR_TAR, ("https://www.cs.toronto.edu/~kriz/",)),
}
