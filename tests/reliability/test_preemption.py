"""Preemption: SIGTERM / SIGINT end the run after the current step with a checkpoint of that step.

The signal arrives while an async save is in flight; the loop must finish the step, wait for that save,
save the step it reached synchronously, print a message and exit 0. Resuming from the preemption
checkpoint must reproduce an uninterrupted run exactly (data-iterator state included).
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import time

import numpy as np
import pytest

from omnihuman_jax.checkpointing import Checkpointer, checkpoint_dir, incomplete_saves, load_params
from omnihuman_jax.trainer import _StopSignal
from tests.reliability.conftest import ROOT, TOTAL_STEPS, run_env, run_training, train_argv


def test_stop_signal_sets_flag_and_restores_previous_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with _StopSignal(single_process=True) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.received == signal.SIGTERM and stop.describe() == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_stop_signal_leaves_sigterm_to_jax_preemption_service_with_several_processes():
    before = signal.getsignal(signal.SIGTERM)
    with _StopSignal(single_process=False):
        assert signal.getsignal(signal.SIGTERM) is before


def _signal_during_run(workdir: pathlib.Path, cache: str, log: pathlib.Path, sig: int) -> tuple[int, str]:
    """Starts the tiny run and sends `sig` the moment an async save is in flight."""
    ckpt = checkpoint_dir(str(workdir))
    with open(log, "w") as out:
        proc = subprocess.Popen(
            train_argv(workdir), cwd=ROOT, env=run_env(cache), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            end = time.monotonic() + 300
            while not incomplete_saves(ckpt):
                assert proc.poll() is None, "the run ended before its first save"
                assert time.monotonic() < end, "no save started in time"
                time.sleep(0.002)
            proc.send_signal(sig)
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return rc, log.read_text()


@pytest.mark.parametrize(
    "sig",
    [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
    ids=["sigterm", "sigint"],
)
def test_signal_mid_save_saves_the_step_reached_and_exits_zero(tmp_path, jax_cache_dir, reference_run, sig):
    workdir = tmp_path / "run"
    rc, out = _signal_during_run(workdir, jax_cache_dir, tmp_path / "log.txt", sig)
    assert rc == 0, out[-3000:]
    name = signal.Signals(sig).name
    assert f"received {name}: finishing the current step" in out
    match = re.search(r"finished at step (\d+) \(preempted\)", out)
    assert match, out[-3000:]
    stopped = int(match.group(1))
    assert stopped < TOTAL_STEPS
    assert f"received {name}: stopped after step {stopped}; the newest checkpoint is step {stopped}" in out
    ckpt = Checkpointer(str(workdir))
    assert ckpt.latest_step() == stopped and 2 in ckpt.all_steps()  # the in-flight save completed too
    ckpt.close()
    assert incomplete_saves(checkpoint_dir(str(workdir))) == []
    if sig != signal.SIGTERM:
        return
    rc, out = run_training(train_argv(workdir), jax_cache_dir, tmp_path / "resume.txt")
    assert rc == 0 and f"resumed from checkpoint step {stopped}" in out, out[-3000:]
    got, _ = load_params(str(workdir), "params")
    want, _ = load_params(str(reference_run), "params")
    for a, b in zip(_leaves(got), _leaves(want), strict=True):
        assert np.array_equal(a, b), f"params after preemption + resume differ by {np.max(np.abs(a - b))}"


def _leaves(tree):
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from _leaves(tree[k])
    else:
        yield np.asarray(tree)
