"""Checkpoints restore onto a different mesh, and a later stage initialises from an earlier stage's params."""

from __future__ import annotations

import jax
import numpy as np

from omnihuman_jax import checkpointing as ckpt_lib
from omnihuman_jax import sharding as shd
from omnihuman_jax.batch import sample_model_inputs
from omnihuman_jax.train_state import abstract_state, init_train_state, make_optimizer
from tests.model_fixtures import build, random_batch, tiny_config


def _state(cfg, devices, sizes, seed=0, **model_overrides):
    mesh = shd.make_mesh(sizes, devices)
    model = build(cfg, **model_overrides)
    opt = make_optimizer(cfg.optimizer, cfg.total_steps)
    batch = random_batch(cfg, cfg.batch_size)
    return init_train_state(
        model, opt, sample_model_inputs(batch), seed, mesh, cfg.sharding.logical_axis_rules
    )


def test_checkpoint_saved_on_8_devices_restores_onto_another_mesh(tmp_path):
    cfg = tiny_config(batch_size=8)
    state8, _ = _state(cfg, jax.devices()[:8], dict(data=2, fsdp=2, tensor=2))
    ck = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
    ck.save(3, state8, {"step": 3}, {"step": 3})
    ck.wait()
    # Restore onto a 4-device (1, 4, 1) mesh: pure fsdp, a different layout of every sharded param.
    fresh, sh4 = _state(cfg, jax.devices()[:4], dict(data=1, fsdp=4, tensor=1), seed=1)
    step, restored, data_state, meta = ck.restore_latest(abstract_state(fresh, sh4))
    ck.close()
    assert step == 3 and data_state == {"step": 3} and meta["step"] == 3
    q = restored.params["transformer_blocks_0"]["attn"]["to_q"]["kernel"]
    assert len(q.sharding.device_set) == 4 and q.addressable_shards[0].data.shape == (16, 64)  # 4-way fsdp
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state8), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_stage2_initialises_from_stage1_params_and_new_modules_keep_zero_init(tmp_path):
    """A base without audio/pose modules (stage 1 of an imported text-to-video model) initialises the full
    model: shared params load exactly; the audio and pose modules and the widened patch embedding keep
    their init, with zero output projections, so the stage-2 model starts equal to the base."""
    cfg = tiny_config()
    one = (jax.devices()[:1], dict(data=1, fsdp=1, tensor=1))
    base, _ = _state(cfg, *one, seed=3, use_audio=False, use_pose=False)
    ck = ckpt_lib.Checkpointer(str(tmp_path / "stage1"), async_save=False)
    ck.save(5, base, {}, {"step": 5})
    ck.close()
    full, _ = _state(cfg, *one, seed=4)
    loaded, names, kept = ckpt_lib.restore_params_only(str(tmp_path / "stage1"), full.params)
    merged = ckpt_lib.merge_params(full.params, loaded)
    assert any("audio_attn" in k for k in kept) and any("pose_guider" in k for k in kept)
    assert "['cond_embedder']['kernel']" in kept  # wider with pose channels: shape differs, kept
    flat_base = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(base.params)[0]}
    for path, leaf in jax.tree_util.tree_flatten_with_path(merged)[0]:
        key = jax.tree_util.keystr(path)
        if key in names:
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_base[key]), err_msg=key)
        if key.endswith("['audio_attn']['to_out']['kernel']") or key == "['cond_embedder']['kernel']":
            assert not np.asarray(leaf).any(), key  # zero-init survives


def test_state_after_init_from_can_be_donated_to_the_train_step(tmp_path):
    """init_from gives params and EMA separate buffers: a donating jit (as the train step) accepts it."""
    import ml_collections

    from omnihuman_jax.trainer import _restore_or_init

    cfg = tiny_config()
    one = (jax.devices()[:1], dict(data=1, fsdp=1, tensor=1))
    base, _ = _state(cfg, *one, seed=3)
    ck = ckpt_lib.Checkpointer(str(tmp_path / "stage1"), async_save=False)
    ck.save(5, base, {}, {"step": 5})
    ck.close()
    fresh, shardings = _state(cfg, *one, seed=4)
    run_cfg = ml_collections.ConfigDict({"checkpoint": {"init_from": str(tmp_path / "stage1")}})
    empty = ckpt_lib.Checkpointer(str(tmp_path / "stage2"), async_save=False)
    state, step = _restore_or_init(run_cfg, empty, fresh, shardings, source=None)
    empty.close()
    assert step == 0
    out = jax.jit(lambda s: jax.tree.map(lambda x: x + 0, s), donate_argnums=0)(state)
    np.testing.assert_array_equal(
        np.asarray(jax.tree.leaves(out.ema_params)[0]), np.asarray(jax.tree.leaves(base.params)[0])
    )
