"""Damaged checkpoints: a truncated file in the newest step gives an error naming that step and a
fallback to the previous step; leftovers of a killed save are removed with a log line; a checkpoint of
another model config is refused, not mistaken for damage. The end-to-end case truncates the newest step
of a finished run and checks that resuming retrains the lost steps to the very same params.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnihuman_jax.checkpointing import (
    DAMAGED_PREFIX,
    Checkpointer,
    CheckpointError,
    checkpoint_dir,
    load_params,
)
from tests.reliability.conftest import TOTAL_STEPS, run_training, train_argv


def _state(value: float, width: int = 32) -> dict:
    return {"params": {"w": jnp.full((64, width), value), "b": jnp.arange(8.0) + value}, "step": jnp.int32(0)}


def _abstract(state: dict) -> dict:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _truncate_largest_state_file(step_dir: pathlib.Path) -> pathlib.Path:
    files = list((step_dir / "state" / "d").iterdir())  # the OCDBT data files the manifest points to
    target = max(files, key=lambda p: p.stat().st_size)
    os.truncate(target, target.stat().st_size // 2)
    return target


def _saved(tmp_path: pathlib.Path, steps=(2, 4)) -> str:
    ckpt = Checkpointer(str(tmp_path))
    for step in steps:
        ckpt.save(step, _state(float(step)), {"step": step}, {"step": step})
    ckpt.close()
    return checkpoint_dir(str(tmp_path))


def test_truncated_newest_step_names_the_step_and_falls_back_to_previous(tmp_path, caplog):
    directory = pathlib.Path(_saved(tmp_path))
    _truncate_largest_state_file(directory / "4")
    ckpt = Checkpointer(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"checkpoint step 4 .* could not be restored"):
        ckpt.restore(4, _abstract(_state(0.0)))
    with caplog.at_level(logging.ERROR):
        step, state, data, _ = ckpt.restore_latest(_abstract(_state(0.0)))
    assert step == 2 and data == {"step": 2}
    np.testing.assert_array_equal(np.asarray(state["params"]["b"]), np.arange(8.0) + 2)
    assert "checkpoint step 4" in caplog.text and "falling back to the previous step" in caplog.text
    assert ckpt.all_steps() == [2] and (directory / f"{DAMAGED_PREFIX}4").is_dir()  # kept, not deleted
    ckpt.save(4, _state(9.0), {"step": 4}, {})  # the step number is free again
    ckpt.close()
    assert Checkpointer(str(tmp_path)).all_steps() == [2, 4]


def test_every_step_damaged_is_an_error_not_a_silent_fresh_start(tmp_path):
    directory = pathlib.Path(_saved(tmp_path))
    for step in (2, 4):
        _truncate_largest_state_file(directory / str(step))
    with pytest.raises(CheckpointError, match=r"none of the checkpoint steps \[4, 2\]"):
        Checkpointer(str(tmp_path)).restore_latest(_abstract(_state(0.0)))


def test_checkpoint_of_another_config_is_refused_and_left_in_place(tmp_path):
    _saved(tmp_path)
    ckpt = Checkpointer(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"different model .* \['w'\]|different model .*w: \(64, 32\)"):
        ckpt.restore_latest(_abstract(_state(0.0, width=16)))
    assert ckpt.all_steps() == [2, 4]
    ckpt.close()


def test_leftover_of_a_killed_save_is_removed_with_a_log_line(tmp_path, caplog):
    directory = pathlib.Path(_saved(tmp_path))
    partial = directory / "6.orbax-checkpoint-tmp-1700000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half_written").write_bytes(b"\0" * 100)
    with caplog.at_level(logging.WARNING):
        ckpt = Checkpointer(str(tmp_path))
        ckpt.wait()
    assert "removing 1 incomplete checkpoint save(s)" in caplog.text and partial.name in caplog.text
    assert ckpt.latest_step() == 4
    ckpt.close()
    assert not partial.exists()


@pytest.mark.slow  # CI keeps the in-process fallback test above; this adds the CLI round trip
def test_resume_after_truncating_the_newest_step_retrains_to_identical_params(
    tmp_path, reference_run, jax_cache_dir
):
    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    _truncate_largest_state_file(pathlib.Path(checkpoint_dir(str(workdir))) / str(TOTAL_STEPS))
    rc, out = run_training(train_argv(workdir), jax_cache_dir, tmp_path / "log.txt")
    assert rc == 0, out[-3000:]
    assert f"checkpoint step {TOTAL_STEPS} in" in out and "falling back to the previous step" in out
    assert (
        f"resumed from checkpoint step {TOTAL_STEPS - 2}" in out and f"finished at step {TOTAL_STEPS}" in out
    )
    got, step = load_params(str(workdir), "params")
    want, _ = load_params(str(reference_run), "params")
    assert step == TOTAL_STEPS
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert np.array_equal(a, b), f"params differ by {np.max(np.abs(np.asarray(a) - np.asarray(b)))}"
