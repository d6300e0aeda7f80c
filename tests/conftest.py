"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere.

Tests compile many tiny graphs and run each a few times, so XLA's backend optimisation is turned down:
compiles are about 3x faster and results are unchanged (benchmarks never run under this file).
"""

import os

_TEST_XLA_FLAGS = (
    "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
    "--xla_llvm_disable_expensive_passes=true"
)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _TEST_XLA_FLAGS).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
