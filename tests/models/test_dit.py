"""Condition pathways of the OmniHuman DiT (section 3.2): locality, null inputs, RoPE rule, zero-init."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnihuman_jax.conditions import INDEX
from omnihuman_jax.models.attention import AudioCrossAttention
from omnihuman_jax.models.conditions import AudioProjector, motion_channels
from omnihuman_jax.models.rope import rope_cos_sin, video_and_reference_positions
from tests.model_fixtures import build, inputs_from_batch, random_batch, randomize, tiny_config

T_NET = jnp.array([0.3, 0.8])


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config()
    model = build(cfg)
    batch = random_batch(cfg)
    params = jax.jit(model.init)(jax.random.key(0), inputs_from_batch(batch), T_NET)["params"]
    params = randomize(nn.unbox(params))
    apply = jax.jit(lambda p, inputs: model.apply({"params": p}, inputs, T_NET))
    return cfg, model, batch, params, apply


def test_output_is_velocity_of_video_latent_shape(tiny):
    cfg, _, batch, params, apply = tiny
    out = apply(params, inputs_from_batch(batch))
    assert out.shape == batch["latents"].shape
    assert np.isfinite(np.asarray(out)).all()


def test_audio_of_latent_frame_t_changes_only_frame_t_tokens():
    """Audio projector + frame-local cross-attention: a change in latent frame t's audio moves only
    frame t's video tokens (with window k = 0 no neighbouring frame sees it)."""
    b, t, hw, d, f = 1, 3, 4, 16, 9
    proj = AudioProjector(d, 8, window=0, tokens_per_frame=2)
    xattn = AudioCrossAttention(d, 2)
    feats = jax.random.normal(jax.random.key(0), (b, f, 2, 5))
    video = jax.random.normal(jax.random.key(1), (b, t * hw, d))
    pp = proj.init(jax.random.key(2), feats)
    xp = randomize(nn.unbox(xattn.init(jax.random.key(3), video, proj.apply(pp, feats))))

    def run(fe):
        return xattn.apply(xp, video, proj.apply(pp, fe)).reshape(b, t, hw, d)

    base = run(feats)
    # latent frame 1 covers video frames 1..4
    changed = run(feats.at[:, 1:5].add(3.0))
    diff = np.abs(np.asarray(changed - base)).max(axis=(0, 2, 3))  # per latent frame
    assert diff[1] > 1e-3
    assert diff[0] == 0.0 and diff[2] == 0.0, diff


def test_audio_window_reaches_only_adjacent_frames():
    """With window k = 1, latent frame 1's last video frame (4) is seen by frame 2's first (5), no further."""
    b, t, hw, d, f = 1, 3, 4, 16, 9
    proj = AudioProjector(d, 8, window=1, tokens_per_frame=1)
    xattn = AudioCrossAttention(d, 2)
    feats = jax.random.normal(jax.random.key(0), (b, f, 2, 5))
    video = jax.random.normal(jax.random.key(1), (b, t * hw, d))
    pp = proj.init(jax.random.key(2), feats)
    xp = randomize(nn.unbox(xattn.init(jax.random.key(3), video, proj.apply(pp, feats))))
    run = lambda fe: xattn.apply(xp, video, proj.apply(pp, fe)).reshape(b, t, hw, d)
    diff = np.abs(np.asarray(run(feats.at[:, 2].add(3.0)) - run(feats))).max(axis=(0, 2, 3))
    assert diff[1] > 1e-3 and diff[0] == 0.0 and diff[2] == 0.0, diff  # frame 2's window is 1..3


@pytest.mark.parametrize("frame_pos", [False, True])
def test_audio_frame_pos_lets_the_update_tell_the_video_frames_of_a_latent_frame_apart(frame_pos):
    """Reordering the 4 video frames of latent frame 1 (window 0): without slot embeddings the frame-local
    cross-attention sees the same set of tokens and gives the same update; with them it does not."""
    b, t, hw, d, f = 1, 3, 4, 16, 9
    proj = AudioProjector(d, 8, window=0, tokens_per_frame=2, frame_pos=frame_pos)
    xattn = AudioCrossAttention(d, 2)
    feats = jax.random.normal(jax.random.key(0), (b, f, 2, 5))
    video = jax.random.normal(jax.random.key(1), (b, t * hw, d))
    pp = proj.init(jax.random.key(2), feats)
    assert ("frame_pos" in pp["params"]) == frame_pos
    xp = randomize(nn.unbox(xattn.init(jax.random.key(3), video, proj.apply(pp, feats))))

    def run(fe):
        return xattn.apply(xp, video, proj.apply(pp, fe)).reshape(b, t, hw, d)

    reordered = feats.at[:, 1:5].set(feats[:, jnp.array([4, 3, 2, 1])])  # video frames 1..4, reversed
    diff = np.abs(np.asarray(run(reordered) - run(feats))).max(axis=(0, 2, 3))  # per latent frame
    assert diff[0] == 0.0 and diff[2] == 0.0, diff
    if frame_pos:
        assert diff[1] > 1e-3, diff
    else:
        assert diff[1] < 1e-5, diff  # the same tokens in another order: equal up to float summation order


@pytest.mark.parametrize("condition", ["text", "audio", "pose", "motion"])
def test_dropped_condition_equals_its_null_input(tiny, condition):
    cfg, _, batch, params, apply = tiny
    dropped = dict(batch)
    dropped["condition_mask"] = batch["condition_mask"].copy()
    dropped["condition_mask"][:, INDEX[condition]] = False
    dropped["motion_mask"] = np.ones_like(batch["motion_mask"])
    dropped["motion_mask"][:, -1] = False
    null = dict(dropped)
    null["condition_mask"] = batch["condition_mask"].copy()
    if condition == "text":
        null["text_emb"] = np.zeros_like(batch["text_emb"])
        null["text_mask"] = np.zeros_like(batch["text_mask"])
        null["text_mask"][:, 0] = True
    elif condition == "audio":
        null["audio_feats"] = np.zeros_like(batch["audio_feats"])
    elif condition == "pose":
        null["pose_heatmaps"] = np.zeros_like(batch["pose_heatmaps"])
    else:
        null["motion_mask"] = np.zeros_like(batch["motion_mask"])
    a = apply(params, inputs_from_batch(dropped))
    b = apply(params, inputs_from_batch(null))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    c = apply(params, inputs_from_batch(dict(dropped, condition_mask=batch["condition_mask"])))
    assert np.abs(np.asarray(a - c)).max() > 1e-4, "the condition has no effect at all"


def test_dropped_reference_is_masked_out_of_attention(tiny):
    cfg, _, batch, params, apply = tiny
    off = dict(batch, condition_mask=batch["condition_mask"].copy())
    off["condition_mask"][:, INDEX["reference"]] = False
    other = dict(off, ref_latents=batch["ref_latents"] * -3.0 + 1.0)
    a = apply(params, inputs_from_batch(off))
    b = apply(params, inputs_from_batch(other))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    on = apply(params, inputs_from_batch(batch))
    assert np.abs(np.asarray(on - a)).max() > 1e-4


def test_reference_tokens_carry_zero_temporal_rope():
    t, h, w = 3, 2, 2
    pos = video_and_reference_positions(t, h, w, with_reference=True)
    ref = pos[t * h * w :]
    assert (ref[:, 0] == 0).all()
    np.testing.assert_array_equal(np.asarray(ref[:, 1:]), np.asarray(pos[: h * w, 1:]))
    cos, sin = rope_cos_sin(pos, (4, 6, 6), 256.0)
    np.testing.assert_allclose(np.asarray(cos[t * h * w :, :2]), 1.0)  # temporal band: angle 0
    np.testing.assert_allclose(np.asarray(sin[t * h * w :, :2]), 0.0)
    assert np.abs(np.asarray(sin[h * w * 2 : h * w * 3, :2])).max() > 0  # video frame 2 does rotate


def test_zero_init_audio_and_pose_leave_base_output_unchanged():
    """A text-to-video base (no audio / pose modules) equals the full model at init on shared params."""
    cfg = tiny_config()
    batch = random_batch(cfg)
    inputs = inputs_from_batch(batch)
    base = build(cfg, use_audio=False, use_pose=False)
    full = build(cfg)
    base_params = randomize(nn.unbox(jax.jit(base.init)(jax.random.key(0), inputs, T_NET)["params"]))
    full_params = nn.unbox(jax.jit(full.init)(jax.random.key(1), inputs, T_NET)["params"])
    flat_base = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(base_params)[0]}

    def take(path, leaf):
        key = jax.tree_util.keystr(path)
        if key in flat_base and flat_base[key].shape == leaf.shape:
            return flat_base[key]
        return leaf

    merged = jax.tree_util.tree_map_with_path(take, full_params)
    out_base = base.apply({"params": base_params}, inputs, T_NET)
    out_full = full.apply({"params": merged}, inputs, T_NET)
    np.testing.assert_allclose(np.asarray(out_full), np.asarray(out_base), atol=1e-5)


def test_motion_hold_stacks_the_last_motion_latent_on_every_frame_to_predict():
    z = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 2, 2, 3)), jnp.float32)  # (B, T, h, w, C)
    mask = jnp.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    held = np.asarray(motion_channels(z, mask, hold=True))
    plain = np.asarray(motion_channels(z, mask))
    np.testing.assert_array_equal(held[..., -1], plain[..., -1])  # the mask channel is unchanged
    np.testing.assert_array_equal(held[0, :2, ..., :3], np.asarray(z[0, :2]))
    np.testing.assert_array_equal(held[0, 2:, ..., :3], np.broadcast_to(np.asarray(z[0, 1]), (2, 2, 2, 3)))
    np.testing.assert_array_equal(held[1, 1:, ..., :3], np.broadcast_to(np.asarray(z[1, 0]), (3, 2, 2, 3)))
    np.testing.assert_array_equal(held[2], 0.0)  # no motion frames: zeros, as without hold
    np.testing.assert_array_equal(plain[0, 2:, ..., :3], 0.0)


def _gated(tiny, region: np.ndarray):
    """The tiny model with model.audio_gate, the same params, and inputs carrying `region` (B, T, h, w)."""
    cfg, _, batch, params, _ = tiny
    gated = build(cfg, audio_gate=True)
    inputs = dict(inputs_from_batch(batch), audio_region=jnp.asarray(region, jnp.float32))
    return lambda feats: gated.apply({"params": params}, dict(inputs, audio_feats=feats), T_NET)


def test_audio_gate_with_the_whole_frame_equals_the_ungated_model(tiny):
    cfg, _, batch, params, apply = tiny
    b, t, h, w = batch["latents"].shape[:4]
    run = _gated(tiny, np.ones((b, t, h, w)))
    feats = jnp.asarray(batch["audio_feats"])
    np.testing.assert_allclose(run(feats), apply(params, inputs_from_batch(batch)), atol=1e-5)


def test_audio_gate_with_an_empty_region_makes_the_output_deaf_to_audio(tiny):
    _, _, batch, _, _ = tiny
    b, t, h, w = batch["latents"].shape[:4]
    feats = jnp.asarray(batch["audio_feats"])
    deaf = _gated(tiny, np.zeros((b, t, h, w)))
    np.testing.assert_array_equal(deaf(feats), deaf(feats + 3.0))
    region = np.zeros((b, t, h, w))
    region[:, :, :2, :2] = 1.0  # one patch of every frame hears it
    hearing = _gated(tiny, region)
    assert np.abs(np.asarray(hearing(feats) - hearing(feats + 3.0))).max() > 1e-3


def test_audio_gate_without_a_region_input_names_it(tiny):
    cfg, _, batch, params, _ = tiny
    gated = build(cfg, audio_gate=True)
    with pytest.raises(ValueError, match="audio_region"):
        gated.apply({"params": params}, inputs_from_batch(batch), T_NET)


def test_region_tokens_pool_each_patch_in_token_order():
    from omnihuman_jax.models.dit import patchify, region_tokens

    region = np.zeros((1, 2, 4, 4), np.float32)
    region[0, 1, 3, 0] = 1.0  # frame 1, patch row 1, patch column 0 (p = 2)
    tokens = np.asarray(region_tokens(jnp.asarray(region), 2))
    assert tokens.shape == (1, 8) and tokens.nonzero()[1].tolist() == [6]
    # the same order as the video tokens: patchify of the region as a 1-channel latent
    np.testing.assert_array_equal(tokens, np.asarray(patchify(jnp.asarray(region)[..., None], 2)).max(-1))
