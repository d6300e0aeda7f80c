"""metrics.jsonl stays one clean line per step across a kill and a resume; the MFU peak warms up first."""

from __future__ import annotations

import json
import math
import time

from omnihuman_jax.metrics import MetricWriter, measure_matmul_peak


def test_resume_drops_rerun_steps_and_a_torn_last_line(tmp_path):
    w = MetricWriter(str(tmp_path), tensorboard=False)
    for step in range(1, 6):
        w.write(step, {"loss": 1.0 / step})
    with open(w.path, "a") as f:
        f.write('{"step": 6, "lo')  # a kill mid-write
    assert w.resume_at(4) == 2  # step 5 is re-run after restoring step 4; the torn line goes too
    w.write(5, {"loss": 0.5})
    steps = [json.loads(line)["step"] for line in open(w.path)]
    assert steps == [1, 2, 3, 4, 5]


def test_matmul_peak_warms_the_device_up_before_timing():
    t0 = time.perf_counter()
    peak = measure_matmul_peak(64, repeats=2, warmup_s=0.3)
    assert time.perf_counter() - t0 >= 0.3  # a cold host's first matmuls are never the timed ones
    assert math.isfinite(peak) and peak > 0


def test_trainer_measures_the_mfu_peak_in_the_models_compute_dtype_unless_the_config_gives_it(monkeypatch):
    import jax.numpy as jnp

    from configs.base import get_base_config
    from omnihuman_jax import trainer

    calls = []
    monkeypatch.setattr(trainer, "measure_matmul_peak", lambda **kw: calls.append(kw) or 1e12)
    config = get_base_config(1, "tiny")
    config.model.dtype = "bfloat16"
    assert trainer.peak_flops_per_device(config) == 1e12
    assert calls == [{"dtype": jnp.dtype("bfloat16")}]
    config.metrics.peak_flops_per_device = 4e14
    assert trainer.peak_flops_per_device(config) == 4e14 and len(calls) == 1


def test_peak_matmul_is_8192_wide_on_accelerators_where_2048_is_too_short_to_reach_the_peak():
    from omnihuman_jax.metrics import peak_matmul_size

    assert peak_matmul_size("cpu") == 2048
    assert peak_matmul_size("gpu") == peak_matmul_size("tpu") == 8192
