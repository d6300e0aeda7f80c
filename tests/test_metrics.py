"""metrics.jsonl stays one clean line per step across a kill and a resume."""

from __future__ import annotations

import json

from omnihuman_jax.metrics import MetricWriter


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
