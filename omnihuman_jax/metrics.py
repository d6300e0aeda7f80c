"""Metric writers: console, TensorBoard event files and WORKDIR/metrics.jsonl (one JSON object per line).

Also measures a device's matmul peak, the denominator of MFU when the config gives none.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class MetricWriter:
    def __init__(self, workdir: str, tensorboard: bool = True, is_primary: bool = True):
        self.is_primary = is_primary
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if is_primary:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def resume_at(self, step: int) -> int:
        """Drops lines past the restored `step` (steps about to be re-run) and a torn last line left by a
        kill; returns how many lines were dropped. The file is rewritten atomically."""
        if not self.is_primary or not os.path.exists(self.path):
            return 0
        with open(self.path) as f:
            lines = f.read().split("\n")
        kept = []
        for line in lines:
            try:
                if line and json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        dropped = sum(1 for line in lines if line) - len(kept)
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)
        return dropped

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.is_primary:
            return
        clean = {k: _to_py(v) for k, v in scalars.items()}
        record = {"step": int(step), **clean}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, float | int) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in clean.items() if not k.startswith("loss_t"))
        print(f"step {step}: {shown}", flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _to_py(v: Any) -> Any:
    v = np.asarray(v)
    if v.ndim == 0:
        return v.item()
    return v.tolist()


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def bucket_losses(sums: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """Per-timestep-bucket mean losses, for buckets that had samples."""
    n = len(sums)
    return {
        f"loss_t{i}of{n}": float(s / c) for i, (s, c) in enumerate(zip(sums, counts, strict=True)) if c > 0
    }


def peak_matmul_size(platform: str) -> int:
    """Side of the square matmul that measures a device's peak: 2048 on CPU; 8192 on GPU / TPU, where a
    2048^3 product (17 GFLOP, tens of microseconds) is too short to reach the peak and would inflate MFU."""
    return 2048 if platform == "cpu" else 8192


def measure_matmul_peak(
    n: int | None = None, dtype=jnp.float32, repeats: int = 5, device=None, warmup_s: float = 0.5
) -> float:
    """FLOP/s of a square matmul on one device: the MFU denominator on machines without a spec sheet.

    `n` defaults to `peak_matmul_size` of the device's platform; `dtype` should be the model's compute
    dtype (a bf16 run measured against an f32 peak would overstate its MFU). Runs the matmul for
    `warmup_s` seconds before timing: a host that has just started or woken reads low at first (seen:
    106 against 200 GFLOP/s on a fresh 2-core VM), which would inflate MFU.
    """
    device = device or jax.devices()[0]
    n = n or peak_matmul_size(device.platform)
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t_end = time.perf_counter() + warmup_s
    while time.perf_counter() < t_end:
        f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
