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
