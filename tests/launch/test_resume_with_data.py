"""Exact resume of `python -m launch.train` across a process exit, data-iterator state included.

A run of 2N steps and a run of N steps, an exit, then N more must agree exactly: losses, params, EMA and
optimizer state (N odd, so a resume falls inside whatever pattern the step count might hide). The data
state travels in the checkpoint (docs/design.md, Data source API: get_state / set_state), for the
synthetic source and for a dataset built by `data_pipeline.build` (grain pipeline).

The LR schedule is pinned with `optimizer.decay_steps`, so it does not depend on `total_steps`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from tests.launch.test_train_on_dataset import read_metrics, run_module, shared_datasets, subprocess_env

N = 3  # odd
METRIC_KEYS = {"step", "loss", "grad_norm", "lr", "step_time_s", "mfu"}
SCHEDULE = ("--config.optimizer.warmup_steps=2", "--config.optimizer.decay_steps=20")


def _train(stage: int, workdir: Path, steps: int, env: dict[str, str], *extra: str) -> str:
    args = [
        f"--config=configs/stage{stage}.py:tiny",
        f"--workdir={workdir}",
        f"--config.total_steps={steps}",
        "--config.metrics.peak_flops_per_device=1e12",  # skip the start-up matmul measurement
        "--config.metrics.tensorboard=False",
        *SCHEDULE,
        *extra,
    ]
    return run_module("launch.train", args, env)


def _state(workdir: Path, step: int) -> Any:
    """The full train state of checkpoint `step`, restored as stored (numpy leaves)."""
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def _data_state(workdir: Path, step: int) -> dict:
    folder = workdir / "checkpoints" / str(step) / "data"
    (name,) = [p for p in folder.iterdir() if p.suffix in ("", ".json") and p.is_file()]
    return json.loads(name.read_text())


def _assert_trees_identical(a: Any, b: Any) -> None:
    flat_a = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(a)[0]}
    flat_b = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(b)[0]}
    assert flat_a.keys() == flat_b.keys(), sorted(set(flat_a) ^ set(flat_b))[:10]
    diffs = []
    for key, x in flat_a.items():
        x, y = np.asarray(x), np.asarray(flat_b[key])
        if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=True):
            err = (
                np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))) if x.shape == y.shape else "shape"
            )
            diffs.append(f"{key}: max |diff| {err}")
    assert not diffs, f"{len(diffs)} of {len(flat_a)} leaves differ: {diffs[:10]}"


def _losses(workdir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(workdir)}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return subprocess_env(tmp_path_factory.getbasetemp() / "jax_cache")


@pytest.fixture(scope="module")
def synthetic_straight(tmp_path_factory, env) -> Path:
    """2N = 6 straight steps on the synthetic source (the README's first command, shortened)."""
    workdir = tmp_path_factory.mktemp("synthetic_straight")
    out = _train(1, workdir, 2 * N, env)
    assert f"finished at step {2 * N}" in out
    return workdir


def test_synthetic_run_writes_metrics_jsonl_with_the_documented_keys(synthetic_straight):
    metrics = read_metrics(synthetic_straight)
    assert [m["step"] for m in metrics] == list(range(1, 2 * N + 1))
    for m in metrics:
        assert METRIC_KEYS <= m.keys(), METRIC_KEYS - m.keys()
        assert np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"]) and m["step_time_s"] > 0


def test_rerun_with_more_steps_resumes_from_the_last_checkpoint_and_appends_metrics(synthetic_straight, env):
    before = read_metrics(synthetic_straight)
    out = _train(1, synthetic_straight, 3 * N, env)
    assert f"resumed from checkpoint step {2 * N}" in out
    assert f"finished at step {3 * N}" in out
    after = read_metrics(synthetic_straight)
    assert after[: len(before)] == before, "metrics.jsonl lost or changed earlier lines"
    assert [m["step"] for m in after[len(before) :]] == list(range(2 * N + 1, 3 * N + 1))


@pytest.mark.slow  # fast version: the full-state comparison of the built-dataset test below
def test_synthetic_resume_is_exact_in_loss_params_ema_and_optimizer_state(synthetic_straight, tmp_path, env):
    # synthetic_straight may have been continued to 3N steps already; its step-2N checkpoint stays.
    split = tmp_path / "split"
    _train(1, split, N, env)
    out = _train(1, split, 2 * N, env)
    assert f"resumed from checkpoint step {N}" in out
    straight_losses, split_losses = _losses(synthetic_straight), _losses(split)
    assert [split_losses[s] for s in range(1, 2 * N + 1)] == [straight_losses[s] for s in range(1, 2 * N + 1)]
    _assert_trees_identical(_state(synthetic_straight, 2 * N), _state(split, 2 * N))
    assert _data_state(split, 2 * N) == _data_state(synthetic_straight, 2 * N) == {"step": 2 * N}


def test_stage2_resume_on_a_built_dataset_is_exact_with_the_data_iterator_state(tmp_path_factory, tmp_path):
    from omnihuman_jax.checkpointing import load_params

    # Stage 2 (audio) on the latents dataset of tests/launch/test_train_on_dataset.py.
    data = shared_datasets(tmp_path_factory)
    extra = (f"--config.data.dir={data['latents']}",)
    straight, split = tmp_path / "straight", tmp_path / "split"
    _train(2, straight, 2 * N, data["env"], *extra)
    _train(2, split, N, data["env"], *extra)
    out = _train(2, split, 2 * N, data["env"], *extra)
    assert f"resumed from checkpoint step {N}" in out
    a, b = _losses(straight), _losses(split)
    assert sorted(a) == sorted(b) == list(range(1, 2 * N + 1))
    assert [b[s] for s in sorted(b)] == [a[s] for s in sorted(a)], (a, b)
    assert len(set(a.values())) > 1, "losses do not vary: the batches may be constant"
    for which in ("ema", "params"):
        pa, step_a = load_params(str(straight), which)
        pb, step_b = load_params(str(split), which)
        assert step_a == step_b == 2 * N
        _assert_trees_identical(pa, pb)
    _assert_trees_identical(_state(straight, 2 * N), _state(split, 2 * N))  # optimizer state too
    assert _data_state(straight, 2 * N) == _data_state(split, 2 * N)
