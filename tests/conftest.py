"""Shared test setup: Keras 3 runs on the JAX backend (CPU) as the reference implementation."""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

# Hypothesis profiles: 'ci' (the default, few examples) and 'dev' (HYPOTHESIS_PROFILE=dev).
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=10, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev", max_examples=200, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
