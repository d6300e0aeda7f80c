"""One training job per workdir: a second job fails at once naming the holder; a killed job frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from omnihuman_jax.checkpointing import LOCK_NAME, CheckpointError, workdir_lock
from tests.reliability.conftest import ROOT, run_env, train_argv

HOLDER = (
    "import sys, time\n"
    "from omnihuman_jax.checkpointing import workdir_lock\n"
    "with workdir_lock(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


def test_second_lock_on_a_workdir_fails_naming_the_holder_and_frees_on_exit(tmp_path):
    with workdir_lock(str(tmp_path)):
        assert f"pid {os.getpid()}" in (tmp_path / LOCK_NAME).read_text()
        with pytest.raises(CheckpointError, match=rf"in use by another training job \(pid {os.getpid()} on "):
            with workdir_lock(str(tmp_path)):
                pass
    with workdir_lock(str(tmp_path)):  # released on exit: the next job takes it
        pass


def test_launch_train_on_a_held_workdir_exits_2_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    env = run_env(str(tmp_path / "cache"))
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workdir)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run(
            train_argv(workdir), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"is in use by another training job (pid {holder.pid} on" in proc.stderr
        assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with workdir_lock(str(workdir)):  # the OS dropped the killed holder's flock
        pass
