"""Numerics guard: non-finite steps are skipped and counted, K in a row stop the job, spikes are reported.

The faults come from a wrapped data source (`train_worker.py`: NaN or scaled latents on chosen steps);
the library has no test-only path. Checked: a NaN batch leaves the update out and is counted in
`nonfinite_total`; a checkpoint due inside a non-finite streak is deferred to the next finite step;
`max_nonfinite_steps` consecutive NaN steps end the run with exit code 2 and a readable message, and the
newest checkpoint is the last good state and restores.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from omnihuman_jax.checkpointing import Checkpointer, load_params
from omnihuman_jax.trainer import NonFiniteError, _Health
from tests.reliability.conftest import ROOT, run_training, train_argv

WORKER = str(ROOT / "tests" / "reliability" / "train_worker.py")


def test_health_stops_after_k_consecutive_nonfinite_steps_with_readable_message():
    health = _Health(max_nonfinite=3, spike_factor=0.0, window=10)
    health.observe(1, 1.0, 0)
    health.observe(2, math.nan, 1)
    health.observe(3, math.nan, 2)
    with pytest.raises(NonFiniteError, match=r"3 consecutive non-finite steps .* up to step 4.*checkpoint"):
        health.observe(4, math.inf, 3)


def test_health_counts_a_loss_spike_over_factor_times_running_mean(capsys):
    health = _Health(max_nonfinite=0, spike_factor=4.0, window=10)
    for step, loss in enumerate([1.0, 1.2, 0.8, 1.0, 3.9], start=1):
        health.observe(step, loss, 0)
    assert health.spikes_total == 0
    health.observe(6, 10.0, 0)  # 10 > 4 x mean(1, 1.2, 0.8, 1, 3.9) = 7.9
    health.observe(7, math.nan, 1)  # a non-finite loss is never a spike, nor enters the mean
    assert health.spikes_total == 1
    assert "loss spike at step 6" in capsys.readouterr().out
    assert health.running_mean == pytest.approx(np.mean([1.0, 1.2, 0.8, 1.0, 3.9, 10.0]))


def test_nan_batches_are_skipped_counted_and_a_streak_stops_the_job_with_checkpoint_intact(
    tmp_path, jax_cache_dir
):
    workdir = tmp_path / "run"
    argv = train_argv(
        workdir,
        "--config.max_nonfinite_steps=3",
        "--config.loss_spike_factor=5",
        "--config.loss_spike_window=5",
        "--nan_steps=2,5,6,7",
        "--spike_steps=4",
        module=WORKER,
    )
    rc, out = run_training(argv, jax_cache_dir, tmp_path / "nan.txt")
    assert rc == 2, out[-3000:]
    assert "3 consecutive non-finite steps (loss or gradient) up to step 7: stopping" in out, out[-3000:]
    assert "step 2 is inside a non-finite streak (1 steps): checkpoint deferred" in out
    assert "loss spike at step 4" in out

    records = {r["step"]: r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())}
    assert math.isnan(records[2]["loss"]) and records[2]["nonfinite_total"] == 1
    assert records[4]["nonfinite_total"] == 1 and records[4]["loss_spikes_total"] == 1
    assert records[6]["nonfinite_total"] == 3

    ckpt = Checkpointer(str(workdir))
    steps = ckpt.all_steps()
    ckpt.close()
    assert steps == [3, 4], f"checkpoints {steps}: step 2 deferred to 3, none inside the final streak"
    params, step = load_params(str(workdir), "params")
    assert step == 4
    leaves = [np.asarray(x) for x in _leaves(params)]
    assert all(np.isfinite(x).all() for x in leaves)


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree
