"""Shared test settings: hypothesis profile and the backend in use."""

import os

import keras
import pytest
from hypothesis import HealthCheck, settings

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
