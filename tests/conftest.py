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


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts and ends with the default float32 dtype policy."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
