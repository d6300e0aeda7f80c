"""Flow-ODE sampler and long-video segments (OmniHuman-1 section 3.4)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnihuman_jax.conditions import model_inputs
from omnihuman_jax.flow_matching import shift_timesteps
from omnihuman_jax.guidance import guidance_mode
from omnihuman_jax.long_video import (
    SamplerSettings,
    Segment,
    SegmentSampler,
    covered_frames,
    generate_long_video,
    plan_segments,
)
from omnihuman_jax.sampling import sample_flow, timestep_grid
from tests.model_fixtures import build, random_batch, tiny_config


def test_timestep_grid_is_the_shifted_uniform_grid_from_one_to_zero():
    ts = timestep_grid(4, 3.0)
    expected = np.asarray(shift_timesteps(np.array([1.0, 0.75, 0.5, 0.25, 0.0]), 3.0))
    np.testing.assert_allclose(ts, expected, rtol=1e-6)
    assert ts[0] == 1.0 and ts[-1] == 0.0 and np.all(np.diff(ts) < 0)
    with pytest.raises(ValueError, match="num_steps"):
        timestep_grid(0, 1.0)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_solvers_are_exact_on_a_known_linear_flow(solver):
    rng = np.random.default_rng(0)
    x0, noise = rng.normal(size=(2, 3, 4, 4, 2)), rng.normal(size=(2, 3, 4, 4, 2))
    x0, noise = jnp.asarray(x0, jnp.float32), jnp.asarray(noise, jnp.float32)
    # the true velocity field of x_t = (1 - t) x0 + t noise is noise - x0 everywhere on the path
    out = sample_flow(lambda x, t, i: noise - x0, noise, timestep_grid(3, 2.5), solver=solver)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x0), atol=1e-5)


def test_heun_converges_at_second_order_and_euler_at_first():
    # dx/dt = x from t = 1 to 0: x(0) = x(1) / e
    x1 = jnp.ones((1, 1, 1, 1, 1))

    def error(solver, n):
        out = sample_flow(lambda x, t, i: x, x1, timestep_grid(n, 1.0), solver=solver)
        return abs(float(out.ravel()[0]) - np.exp(-1.0))

    euler_ratio = error("euler", 16) / error("euler", 32)
    heun_ratio = error("heun", 16) / error("heun", 32)
    assert 1.8 < euler_ratio < 2.2, euler_ratio
    assert heun_ratio > 3.5, heun_ratio


def test_known_motion_frames_end_exactly_at_their_latents():
    rng = np.random.default_rng(1)
    noise = jnp.asarray(rng.normal(size=(1, 3, 2, 2, 2)), jnp.float32)
    known = jnp.asarray(rng.normal(size=(1, 3, 2, 2, 2)), jnp.float32)
    mask = jnp.asarray([[True, True, False]])
    out = sample_flow(
        lambda x, t, i: jnp.sin(x) + t, noise, timestep_grid(3, 1.0), known=known, known_mask=mask
    )
    np.testing.assert_allclose(np.asarray(out[:, :2]), np.asarray(known[:, :2]), atol=1e-6)
    assert float(jnp.max(jnp.abs(out[:, 2] - known[:, 2]))) > 0.1


@pytest.mark.parametrize("total,segment", [(1, 9), (7, 33), (9, 9), (10, 9), (82, 17), (83, 33), (250, 97)])
def test_segments_emit_every_frame_once_in_order(total, segment):
    plan = plan_segments(total, segment)
    emitted = [s.start + k for s in plan for k in range(s.emit_from, s.emit_to)]
    assert emitted == list(range(total))
    for prev, seg in zip(plan, plan[1:], strict=False):
        assert seg.start == prev.start + prev.num_frames - 5 and seg.emit_from == 5  # 5 motion frames
    assert all((s.num_frames - 1) % 4 == 0 for s in plan)
    assert covered_frames(plan) >= total


def test_segment_plan_rejects_bad_lengths():
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        plan_segments(20, 10)
    with pytest.raises(ValueError, match="exceed"):
        plan_segments(20, 5)
    with pytest.raises(ValueError, match="at least 1 frame"):
        plan_segments(0, 9)


def test_long_video_joins_segments_with_the_right_frame_count_and_order():
    """Fake segments whose frames carry their global index: the output is 0 .. total - 1 exactly."""
    total = 30
    plan = plan_segments(total, 9)

    def sample(seg, cond, motion):
        return jnp.full((1, seg.latent_frames, 1, 1, 1), float(seg.start))

    def decode(latents):
        start = int(latents.ravel()[0])
        return (start + np.arange(9, dtype=np.uint8))[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)

    out = [f for _, f in generate_long_video(plan, lambda s: {}, sample, decode, lambda f, s: None)]
    frames = np.concatenate(out)
    assert frames.shape[0] == total
    np.testing.assert_array_equal(frames[:, 0, 0, 0], np.arange(total))


@pytest.fixture(scope="module")
def tiny_segment_sampler():
    cfg = tiny_config(**{"shape.latent_frames": 3, "shape.latent_height": 4, "shape.latent_width": 4})
    model = build(cfg)
    batch = random_batch(cfg, batch_size=1)
    inputs = model_inputs({k: jnp.asarray(v) for k, v in batch.items()}, jnp.asarray(batch["latents"]))
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), inputs, jnp.zeros((1,)))["params"])
    rng = np.random.default_rng(1)  # every param random, zero-inits included, so motion channels act
    params = jax.tree.map(lambda x: x + 0.2 * rng.standard_normal(x.shape).astype(np.float32), params)
    settings = SamplerSettings(num_steps=2, shift=1.0, cfg_text=2.0, cfg_audio=3.0, cfg_schedule="linear")
    sampler = SegmentSampler(model, params, guidance_mode("audio"), settings, latent_channels=4)
    keys = ("ref_latents", "text_emb", "text_mask", "audio_feats", "pose_heatmaps")
    conditions = {k: batch[k] for k in keys}
    return sampler, conditions


def _decode(latents) -> np.ndarray:
    """(1, 3, 4, 4, 4) latents -> (9, 4, 4, 3) uint8 frames: latent frame 0 -> 1 frame, later -> 4 each."""
    x = np.asarray(latents)[0]
    idx = np.asarray([0, 1, 1, 1, 1, 2, 2, 2, 2])
    return np.clip(127.5 + 40.0 * x[idx, ..., :3], 0, 255).astype(np.uint8)


def _encode(frames: np.ndarray) -> jnp.ndarray:
    """(5, 4, 4, 3) uint8 -> (1, 2, 4, 4, 4) latents (frame 0; mean of frames 1-4)."""
    x = frames.astype(np.float32) / 40.0 - 127.5 / 40.0
    lat = np.stack([x[0], x[1:].mean(0)])  # (2, 4, 4, 3)
    return jnp.asarray(np.concatenate([lat, lat.mean(-1, keepdims=True)], -1)[None])


def test_changing_motion_frames_changes_the_next_segment_and_not_earlier_ones(tiny_segment_sampler):
    sampler, conditions = tiny_segment_sampler
    plan = plan_segments(17, 9)  # 3 segments: [0, 9), [4, 13), [8, 17)
    assert len(plan) == 3

    def segment_conditions(seg: Segment) -> dict:
        return conditions  # the same 9-frame conditions for every segment

    def run(perturb_after: int | None) -> list[np.ndarray]:
        def encode(frames, seg):
            motion = _encode(frames)
            return motion + 1.5 if seg.index == perturb_after else motion

        return [f for _, f in generate_long_video(plan, segment_conditions, sampler, _decode, encode)]

    base, changed = run(None), run(1)  # new motion frames only for segment 2
    for k in (0, 1):
        np.testing.assert_array_equal(base[k], changed[k])
    assert np.abs(base[2].astype(int) - changed[2].astype(int)).max() > 0
    assert sum(f.shape[0] for f in base) == 17


def test_segment_sampler_scales_the_guided_condition_by_its_own_flag():
    scales = dict(cfg_text=1.5, cfg_audio=3.0, cfg_pose=2.0)
    settings = SamplerSettings(num_steps=3, cfg_schedule="constant", **scales)
    posed = SegmentSampler(None, None, guidance_mode("pose", pose_guidance=True), settings, latent_channels=4)
    audio = SegmentSampler(None, None, guidance_mode("audio"), settings, latent_channels=4)
    np.testing.assert_allclose(posed.s_audio, [2.0] * 3)  # the pose scale fills the second slot
    np.testing.assert_allclose(audio.s_audio, [3.0] * 3)
    np.testing.assert_allclose(posed.s_text, [1.5] * 3)
