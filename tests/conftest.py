"""Shared test settings: hypothesis profile, the backend in use, inductor's
cache directory, full float32 precision on GPUs (torch and JAX), fixtures
that put the dtype policy and the norm registry back after every test, and
one that keeps Keras on the CPU."""

import hashlib
import importlib
import os
import tempfile


def _inductor_cache_dir() -> str:
    """Inductor's on-disk cache, one per vector ISA. Its cache key leaves out
    the ISA its C++ kernels were built for (``ATEN_CPU_CAPABILITY``, or what
    the CPU offers): a cache written with AVX-512 kernels and read under
    ``ATEN_CPU_CAPABILITY=avx2`` gave outputs wrong by 1e9, and NaN, in
    tests/compile. Set before torch is imported (importing keras may call
    inductor's cache_dir(), which fixes the variable)."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    key = hashlib.sha256(f"{os.environ.get('ATEN_CPU_CAPABILITY', '')}|{flags}".encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"normlab-inductor-{key}")


os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", _inductor_cache_dir())

import keras  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "normlab",
    max_examples=int(os.environ.get("NORMLAB_HYPOTHESIS_EXAMPLES", "25")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("normlab")

BACKEND = keras.backend.backend()

#: The backend whose test run also runs the backend-independent tests (marked
#: ``once``: subprocesses that choose their own backend, the docs site build).
ONCE_BACKEND = "torch"


def pytest_collection_modifyitems(config, items):
    if BACKEND == ONCE_BACKEND:
        return
    skip = pytest.mark.skip(reason=f"backend-independent: runs once, in the {ONCE_BACKEND} test run")
    for item in items:
        if "once" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts and ends with the default float32 dtype policy."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(autouse=True)
def _registry_restored():
    """Norms a test registers (register()'s own docstring example among them)
    are gone after it: tests that list every registered norm see the built-in ones."""
    registry = importlib.import_module("normlab.registry")  # (normlab.registry is the function)
    norms, aliases = dict(registry._NORMS), dict(registry._ALIASES)
    yield
    registry._NORMS.clear(), registry._NORMS.update(norms)
    registry._ALIASES.clear(), registry._ALIASES.update(aliases)


def _full_float32_on_gpus() -> None:
    """GPUs round float32 operands of convolutions (cuDNN, on torch) and of
    dots and convolutions (XLA, on JAX) to TF32, 10 bits of mantissa, by
    default; the tests hold float32 results to float64 references."""
    if BACKEND == "torch":
        import torch

        if not torch.cuda.is_available():
            return
        # (The older settings: after the newer fp32_precision ones, reading
        # allow_tf32, as inductor's convolution templates do, raises.)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    elif BACKEND == "jax":
        import jax

        if jax.default_backend() == "gpu":
            jax.config.update("jax_default_matmul_precision", "float32")


_full_float32_on_gpus()


@pytest.fixture
def keras_on_cpu():
    """Keras' tensors and variables on the CPU for the test, on a machine with
    a GPU too (where Keras' torch backend puts them on CUDA): for the tests
    of normlab's CPU kernels, and of torch paths against CPU tensors. Use it
    as ``pytestmark = pytest.mark.usefixtures("keras_on_cpu")``."""
    with keras.device("cpu"):
        yield
