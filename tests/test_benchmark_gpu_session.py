"""benchmarks/gpu_session.sh: its parts run and leave their figures under $OUT (on the CPU, tiny preset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_session_script_writes_mfu_sampler_fit_and_the_checked_step(tmp_path):
    env = dict(
        os.environ,
        OUT=str(tmp_path / "out"),
        PYTHON=sys.executable,
        PLATFORM="cpu",
        PRESET="tiny",
        DTYPE="float32",
        ATTENTION="xla",
        STEPS="1",
        MFU_REMATS="none save_dots",
        REMATS="none",
        MEMORY_GB="0.0105",
        MAX_FRAMES="4",
        SAMPLE_PRESET="tiny",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
    )
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_session.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "out"
    mfu = (out / "mfu.txt").read_text()
    assert "== MFU, remat none" in mfu and "MFU" in mfu.split("remat none", 1)[1]
    assert "remat save_dots" not in mfu, "the first policy ran, so no fallback should follow"
    fit = json.loads((out / "fit.json").read_text())
    (row,) = fit["rows"]
    assert row["remat"] == "none" and 1 <= row["latent_frames"] <= 4
    assert row["total_bytes"] <= fit["budget_bytes"] == int(0.0105 * 2**30)
    if row["latent_frames"] < 4:
        assert row["next_bytes"] is None or row["next_bytes"] > fit["budget_bytes"]
    check = (out / "fit_check.txt").read_text()
    assert f"one step at latent_frames {row['latent_frames']}, remat none" in check and "MFU" in check
    sample = (out / "sample.txt").read_text()
    assert "dtype=float32 attention=xla" in sample and "speedup separate / batched" in sample, sample
