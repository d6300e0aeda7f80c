"""Crash safety: SIGKILL at random moments, mid async save included, never costs a complete checkpoint.

Each trial starts `python -m launch.train` on one workdir and kills it after a seeded random delay, in
turn: while an async save's temporary folder exists, at a random time after training has started, or
at a random time in start-up (imports, init, restore). A final run resumes to the end; its params and
EMA must equal an uninterrupted run's exactly (CPU), and no temporary folder may be left. orbax's atomic
commit (CheckpointManager) is the mechanism; `Checkpointer` removes what a killed save left, with a log
line.
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
LONG_STEPS = 24  # the 10-kill run: room for the kills to land after progress


def _metric_lines(workdir: pathlib.Path) -> int:
    path = workdir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def _newest_step(workdir: pathlib.Path) -> int | None:
    """Read-only (a Checkpointer would clean up the leftovers the next launch must find)."""
    ckpt = pathlib.Path(checkpoint_dir(str(workdir)))
    steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.is_dir() else []
    return max(steps, default=None)


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


def _killed_run(
    workdir: pathlib.Path, argv: list[str], cache: str, log: pathlib.Path, delay: float, mode: str
):
    """One launch killed with SIGKILL; returns what it was doing when killed."""
    ckpt = pathlib.Path(checkpoint_dir(str(workdir)))
    lines0, newest0 = _metric_lines(workdir), _newest_step(workdir) or 0
    started = lambda: _metric_lines(workdir) > lines0  # past restore and leftover cleanup
    ready = {
        # in a save that follows one completed by this launch, so every such kill leaves progress
        "mid_save": lambda: (_newest_step(workdir) or 0) > newest0 and bool(incomplete_saves(str(ckpt))),
        "training": started,
        "start-up": lambda: True,  # imports, init, restore, leftover cleanup
    }[mode]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=run_env(cache), stdout=out, stderr=subprocess.STDOUT)
        try:
            if not _wait_for(proc, ready):
                return "finished before the kill"
            time.sleep(delay)
            saving = bool(incomplete_saves(str(ckpt)))
            before_first_step = _metric_lines(workdir) == lines0
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    if before_first_step:
        return "killed in start-up"
    return "killed mid-save" if saving else "killed between saves"


DELAYS = {"mid_save": (0.0, 0.2), "training": (0.0, 6.0), "start-up": (0.5, 6.0)}


def _check_kills_then_resume(
    tmp_path, reference: pathlib.Path, cache: str, kills: int, seed: int, steps: int
):
    rng = random.Random(seed)
    workdir = tmp_path / "run"
    argv = train_argv(workdir, f"--config.total_steps={steps}")
    outcomes = []
    for i in range(kills):
        leftovers = incomplete_saves(checkpoint_dir(str(workdir)))
        mode = ("mid_save", "training", "start-up")[i % 3]
        log = tmp_path / f"kill{i}.txt"
        outcome = _killed_run(workdir, argv, cache, log, rng.uniform(*DELAYS[mode]), mode)
        outcomes.append(f"{outcome} (newest step {_newest_step(workdir)})")
        if leftovers and outcome in ("killed mid-save", "killed between saves"):
            assert "incomplete checkpoint save" in log.read_text()
    leftovers = incomplete_saves(checkpoint_dir(str(workdir)))
    rc, out = run_training(argv, cache, tmp_path / "resume.txt")
    assert rc == 0 and f"finished at step {steps}" in out, out[-3000:]
    if leftovers:
        assert "incomplete checkpoint save" in out, out[-3000:]
    assert incomplete_saves(checkpoint_dir(str(workdir))) == []
    assert any(o.startswith("killed mid-save") for o in outcomes), f"no kill landed in a save: {outcomes}"
    assert any(not o.endswith("(newest step None)") for o in outcomes), f"no kill after a save: {outcomes}"
    for which in ("params", "ema"):
        got, step = load_params(str(workdir), which)
        want, ref_step = load_params(str(reference), which)
        assert step == ref_step == steps
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
    outcomes = _check_kills_then_resume(tmp_path, reference_run, jax_cache_dir, 2, seed=0, steps=TOTAL_STEPS)
    print("kill outcomes:", outcomes)


@pytest.mark.slow
def test_ten_sigkills_at_random_times_then_resume_equals_uninterrupted_run(tmp_path, jax_cache_dir):
    reference = tmp_path / "reference"
    argv = train_argv(reference, f"--config.total_steps={LONG_STEPS}")
    rc, out = run_training(argv, jax_cache_dir, tmp_path / "reference.txt")
    assert rc == 0, out[-3000:]
    outcomes = _check_kills_then_resume(tmp_path, reference, jax_cache_dir, 10, seed=1, steps=LONG_STEPS)
    print("kill outcomes:", outcomes)
