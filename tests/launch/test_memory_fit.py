"""launch/memory_fit.py: the largest latent_frames whose compiled train step fits a per-device budget."""

from __future__ import annotations

import subprocess
import sys

import jax
import pytest

from launch import compile as aot
from launch import memory_fit
from tests.model_fixtures import tiny_config

CURVES = {
    "linear": lambda n: 1000 + 70 * n,
    "quadratic": lambda n: 500 + 10 * n + 3 * n * n,
    "steps": lambda n: 1000 * (1 + n // 7),  # flat stretches, as XLA's buffer sizes jump
    "oom_past_40": lambda n: None if n > 40 else 100 * n,  # compiling itself ran out of memory
}


def _brute_force(curve, budget: int, limit: int) -> int:
    fits = [n for n in range(1, limit + 1) if curve(n) is not None and curve(n) <= budget]
    return max(fits, default=0)


@pytest.mark.parametrize("name", sorted(CURVES))
@pytest.mark.parametrize("budget", [900, 2500, 4000, 7000, 50_000])
@pytest.mark.parametrize("start", [1, 5, 33, 64])
def test_search_finds_the_same_largest_size_as_trying_every_size(name, budget, start):
    curve, limit = CURVES[name], 64
    fit = memory_fit.largest_fitting(curve, budget, start, limit)
    assert fit.largest == _brute_force(curve, budget, limit)
    if fit.largest:
        assert fit.probes[fit.largest] <= budget
    if 0 < fit.largest < limit:  # the answer is bracketed by a measured size that does not fit
        over = fit.probes[fit.largest + 1]
        assert over is None or over > budget


def test_search_needs_few_compiles_on_linear_and_no_more_than_bisection_on_quadratic_memory():
    for budget in range(1100, 5500, 97):
        fit = memory_fit.largest_fitting(CURVES["linear"], budget, 16, 256)
        assert len(fit.probes) <= 5, (budget, sorted(fit.probes))
    for budget in range(600, 60000, 173):
        for start in (1, 16, 64):
            fit = memory_fit.largest_fitting(CURVES["quadratic"], budget, start, 64)
            assert len(fit.probes) <= 12, (budget, start, list(fit.probes))  # 2 log2(64)


def test_search_reports_zero_when_one_frame_does_not_fit_and_the_limit_when_all_fit():
    assert memory_fit.largest_fitting(CURVES["linear"], 1000, 8, 64).largest == 0
    assert memory_fit.largest_fitting(CURVES["linear"], 10**9, 8, 64).largest == 64
    with pytest.raises(ValueError, match="limit"):
        memory_fit.largest_fitting(CURVES["linear"], 10**9, 8, 0)


def test_device_budget_is_the_reported_bytes_limit_and_none_where_unreported():
    class Reporting:
        def memory_stats(self):
            return {"bytes_limit": 80 * 2**30, "bytes_in_use": 0}

    class Unsupported:
        def memory_stats(self):
            raise NotImplementedError

    assert memory_fit.device_memory_budget([Reporting()]) == 80 * 2**30
    assert memory_fit.device_memory_budget([Unsupported()]) is None
    assert memory_fit.device_memory_budget([object()]) is None
    assert memory_fit.device_memory_budget(jax.devices("cpu")) is None  # CPUs report no limit


def test_fit_on_cpu_returns_the_frames_whose_compiled_step_fits_and_the_next_does_not():
    cfg = tiny_config(**{"batch_size": 1, "mesh.data": 1, "model.scan_layers": True})
    devices = jax.devices("cpu")[:1]
    compiled: dict[int, dict] = {}

    def cached_compile(c, devs):  # each size compiles once, here and in the search
        n = int(c.shape.latent_frames)
        assert c.model.remat == "none"
        if n not in compiled:
            compiled[n] = aot.compile_train_step(c, devs)
        return compiled[n]

    bytes_at = memory_fit.frames_total_bytes(cfg, devices, "none", cached_compile)
    b3, b4 = bytes_at(3), bytes_at(4)
    assert b4 > b3, "one more latent frame should need more memory"
    budget = (b3 + b4) // 2
    (row,) = memory_fit.fit_policies(cfg, devices, ["none"], budget, 4, cached_compile)
    assert row["latent_frames"] == 3 and row["video_frames"] == 9
    assert row["total_bytes"] == b3 and row["next_bytes"] == b4
    hw = (cfg.shape.latent_height // 2) * (cfg.shape.latent_width // 2)
    assert row["tokens"] == dict(video=3 * hw, reference=hw, text=cfg.shape.text_len)
    text = memory_fit.fit_report([row], budget, 4)
    assert "none: 3 latent frames (9 video frames)" in text and "4 needs" in text


def _fit_cli_error(*flags: str) -> str:
    """stderr of `launch.compile --fit` on the tiny config with `flags`, which must exit with status 2."""
    cmd = [sys.executable, "-m", "launch.compile", "--config=configs/stage1.py:tiny", "--fit", *flags]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    return out.stderr


def test_fit_cli_without_a_budget_on_cpu_asks_for_memory_gb():
    assert "--memory_gb" in _fit_cli_error()


def test_fit_cli_rejects_an_unknown_remat_policy_by_name():
    err = _fit_cli_error("--memory_gb=1", "--remats=none,sometimes")
    assert "sometimes" in err and "remat" in err


@pytest.mark.parametrize("flag", ["--memory_gb=-1", "--max_latent_frames=0"])
def test_fit_cli_rejects_a_negative_budget_or_an_empty_search_by_flag_name(flag):
    err = _fit_cli_error(flag)
    assert flag.split("=")[0] in err and "must be at least" in err
