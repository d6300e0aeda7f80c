"""Shared fixtures of the reliability tests: subprocess training runs with a shared compilation cache.

Every run is `python -m launch.train` (or `tests/reliability/train_worker.py`, the same CLI with a faulty
data source) on the tiny stage-1 config, 2 simulated CPU devices, synthetic data, async checkpoints every
2 steps. The persistent JAX compilation cache makes every run after the first skip compilation.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUN_XLA_FLAGS = (
    "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0 "
    "--xla_llvm_disable_expensive_passes=true"
)
TOTAL_STEPS = 8


def run_env(cache_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=RUN_XLA_FLAGS,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    return env


def train_argv(workdir: os.PathLike, *overrides: str, module: str = "launch.train") -> list[str]:
    """The tiny CPU run; `overrides` are extra `--config.KEY=VALUE` flags."""
    target = ["-m", module] if not module.endswith(".py") else [module]
    return [
        sys.executable,
        *target,
        "--config=configs/stage1.py:tiny",
        f"--workdir={workdir}",
        f"--config.total_steps={TOTAL_STEPS}",
        "--config.checkpoint.every_steps=2",
        "--config.checkpoint.async_save=True",
        "--config.checkpoint.max_to_keep=3",
        "--config.optimizer.decay_steps=100",  # the schedule (so the compiled step) ignores total_steps
        "--config.metrics.peak_flops_per_device=1e12",
        "--config.metrics.tensorboard=False",
        *overrides,
    ]


def run_training(argv: list[str], cache_dir: str, log_path: pathlib.Path, timeout: float = 600):
    """Runs a training subprocess to its end; returns (returncode, combined stdout + stderr)."""
    with open(log_path, "w") as log:
        proc = subprocess.run(
            argv, cwd=ROOT, env=run_env(cache_dir), stdout=log, stderr=subprocess.STDOUT, timeout=timeout
        )
    return proc.returncode, log_path.read_text()


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory) -> str:
    """OMNIHUMAN_TEST_JAX_CACHE keeps compiled steps across sessions; otherwise one per session."""
    return os.environ.get("OMNIHUMAN_TEST_JAX_CACHE") or str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, jax_cache_dir) -> pathlib.Path:
    """An uninterrupted run to TOTAL_STEPS: the workdir every interrupted run is compared with."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    rc, out = run_training(train_argv(workdir), jax_cache_dir, workdir.parent / "log.txt")
    assert rc == 0 and f"finished at step {TOTAL_STEPS}" in out, out[-3000:]
    return workdir
