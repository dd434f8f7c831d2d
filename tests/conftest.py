"""Shared test setup: Keras 3 runs on the JAX backend (CPU) as the reference implementation."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
# 8 CPU devices for the partitioning tests (tests/sharding_util.py); set before JAX starts.
# Every other test runs on the first device, as without the flag.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import gc  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
    """Drops each test module's compiled programs when it ends. Every XLA CPU executable holds
    memory maps of its own, and one worker running a few hundred modules' worth of them passed the
    kernel's limit (``vm.max_map_count``, 65530) and crashed inside XLA's compiler."""
    yield
    jax.clear_caches()
    gc.collect()


# Hypothesis profiles: 'ci' (the default, few examples) and 'dev' (HYPOTHESIS_PROFILE=dev).
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
