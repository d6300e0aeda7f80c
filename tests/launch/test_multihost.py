"""Multi-host: launch scripts pass arguments verbatim; 2 JAX processes train like 1 process of 8 devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NASTY_ARGS = [
    "--config=configs/stage1.py:tiny",
    "--workdir=/tmp/run dir/$(touch PWNED)",
    "--config.data.dir=a;touch PWNED2 `id` 'q' \"dq\" \\ *",
    "",
]


def _fake(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


ARGV_DUMP = f"{sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n"


def test_tpu_pod_script_quotes_every_argument_for_the_remote_shell(tmp_path):
    # Fake gcloud: runs the --command string through bash as the remote worker would.
    remote_dir = tmp_path / "remote dir"
    remote_dir.mkdir()
    _fake(tmp_path, "prog", ARGV_DUMP)
    gcloud = _fake(
        tmp_path,
        "gcloud",
        'for a in "$@"; do case $a in --command=*) cmd=${a#--command=};; esac; done\n'
        f'PATH={tmp_path / "bin"}:$PATH exec bash -c "$cmd"\n',
    )
    env = {**os.environ, "GCLOUD": str(gcloud), "OMNIHUMAN_REMOTE_DIR": str(remote_dir)}
    out = subprocess.run(
        ["bash", str(REPO / "launch/tpu_pod.sh"), "my-tpu", "us-east5-a", "--", "prog", *NASTY_ARGS],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert json.loads(out.stdout) == NASTY_ARGS
    assert not list(tmp_path.rglob("PWNED*")), "a config value ran as shell code"


def test_slurm_script_passes_arguments_to_launch_train_verbatim(tmp_path):
    srun = _fake(tmp_path, "srun", ARGV_DUMP)
    env = {**os.environ, "SRUN": str(srun), "GPUS_PER_NODE": "4"}
    out = subprocess.run(
        ["bash", str(REPO / "launch/slurm.sh"), *NASTY_ARGS],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    argv = json.loads(out.stdout)
    assert argv[:3] == ["--ntasks-per-node=4", "--gpus-per-task=1", "--kill-on-bad-exit=1"]
    assert argv[3:6] == ["python", "-m", "launch.train"] and argv[6:] == NASTY_ARGS
    assert not list(tmp_path.rglob("PWNED*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_cmd(workdir: Path, steps: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "launch.train",
        "--config=configs/stage1.py:tiny",
        f"--workdir={workdir}",
        f"--config.total_steps={steps}",
        "--config.batch_size=8",
        "--config.optimizer.decay_steps=20",
        "--config.checkpoint.every_steps=3",
        "--config.metrics.tensorboard=false",
        "--config.metrics.peak_flops_per_device=1e9",
    ]


def _env(devices: int, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "TPU_"))}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0 "
        "--xla_llvm_disable_expensive_passes=true",
        JAX_PLATFORMS="cpu",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        PYTHONPATH=str(REPO),
        **extra,
    )
    return env


def _losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoint_restores_in_one(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run(_train_cmd(single, 4), env=_env(8), cwd=REPO, check=True, capture_output=True, timeout=900)

    port = _free_port()
    procs = [
        subprocess.Popen(
            _train_cmd(multi, 3),
            env=_env(
                4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)
            ),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n\n".join(log[-3000:] for log in logs)

    want, got = _losses(single), _losses(multi)
    for step in (1, 2, 3):
        assert abs(got[step] - want[step]) <= 1e-5 * abs(want[step]), (step, got[step], want[step])

    resumed = subprocess.run(
        _train_cmd(multi, 4), env=_env(8), cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint step 3" in resumed.stdout, resumed.stdout[-2000:]
    step4 = _losses(multi)[4]
    assert abs(step4 - want[4]) <= 1e-5 * abs(want[4]), (step4, want[4])
