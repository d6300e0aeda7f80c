"""Crash safety: SIGKILL at random moments, mid async save included, never costs a complete checkpoint.

Each trial starts `python -m launch.train` on one workdir and kills it (seeded random delays): either a
random time after training has started, or a random instant while an async save's temporary folder
exists. A final run resumes to the end; its params and EMA must equal an uninterrupted run's exactly
(CPU), and no temporary folder may be left. orbax's atomic commit (CheckpointManager) is the mechanism;
`Checkpointer` removes what a killed save left, with a log line.
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import time

import numpy as np
import pytest

from omnihuman_jax.checkpointing import checkpoint_dir, incomplete_saves, load_params
from tests.reliability.conftest import ROOT, TOTAL_STEPS, run_env, run_training, train_argv

pytestmark = pytest.mark.kill


def _metric_lines(workdir: pathlib.Path) -> int:
    path = workdir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 300.0) -> bool:
    """Polls `ready()` every 2 ms until it holds (True) or the process ends (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ready():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise TimeoutError("training subprocess made no progress in time")


def _killed_run(workdir: pathlib.Path, cache: str, log: pathlib.Path, rng: random.Random, mid_save: bool):
    """One launch killed with SIGKILL; returns what it was doing when killed."""
    ckpt = pathlib.Path(checkpoint_dir(str(workdir)))
    lines0 = _metric_lines(workdir)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            train_argv(workdir), cwd=ROOT, env=run_env(cache), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            if mid_save:
                ready = lambda: bool(incomplete_saves(str(ckpt)))
                delay = rng.uniform(0.0, 0.2)
            else:
                ready = lambda: _metric_lines(workdir) > lines0
                delay = rng.uniform(0.0, 1.5)
            if not _wait_for(proc, ready):
                return "finished before the kill"
            time.sleep(delay)
            saving = bool(incomplete_saves(str(ckpt)))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return "killed mid-save" if saving else "killed between saves"


def _check_kills_then_resume(tmp_path, reference_run, jax_cache_dir, kills: int, seed: int):
    rng = random.Random(seed)
    workdir = tmp_path / "run"
    outcomes = []
    for i in range(kills):
        leftovers = incomplete_saves(checkpoint_dir(str(workdir)))
        outcome = _killed_run(workdir, jax_cache_dir, tmp_path / f"kill{i}.txt", rng, mid_save=i % 2 == 0)
        outcomes.append(outcome)
        if leftovers and outcome != "finished before the kill":
            assert "incomplete checkpoint save" in (tmp_path / f"kill{i}.txt").read_text()
    leftovers = incomplete_saves(checkpoint_dir(str(workdir)))
    rc, out = run_training(train_argv(workdir), jax_cache_dir, tmp_path / "resume.txt")
    assert rc == 0 and f"finished at step {TOTAL_STEPS}" in out, out[-3000:]
    if leftovers:
        assert "incomplete checkpoint save" in out, out[-3000:]
    assert incomplete_saves(checkpoint_dir(str(workdir))) == []
    assert "killed mid-save" in outcomes, f"no kill landed during a save: {outcomes}"
    for which in ("params", "ema"):
        got, step = load_params(str(workdir), which)
        want, ref_step = load_params(str(reference_run), which)
        assert step == ref_step == TOTAL_STEPS
        flat_got = dict(_leaves(got))
        for name, value in _leaves(want):
            diff = float(np.max(np.abs(flat_got[name] - value))) if value.size else 0.0
            assert np.array_equal(flat_got[name], value), f"{which} {name} differs by {diff} after {outcomes}"
    return outcomes


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}/{k}")
    else:
        yield prefix, np.asarray(tree)


def test_two_sigkills_one_mid_save_then_resume_equals_uninterrupted_run(
    tmp_path, reference_run, jax_cache_dir
):
    _check_kills_then_resume(tmp_path, reference_run, jax_cache_dir, kills=2, seed=0)


@pytest.mark.slow
def test_ten_sigkills_at_random_times_then_resume_equals_uninterrupted_run(
    tmp_path, reference_run, jax_cache_dir
):
    outcomes = _check_kills_then_resume(tmp_path, reference_run, jax_cache_dir, kills=10, seed=1)
    print("kill outcomes:", outcomes)
