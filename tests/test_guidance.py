"""Multi-condition CFG (OmniHuman-1 section 3.4): branch masks, combination, batching, annealing."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnihuman_jax.conditions import CONDITIONS
from omnihuman_jax.guidance import (
    branch_velocities,
    cfg_schedule,
    combine,
    guidance_mode,
    make_guided_velocity,
)
from omnihuman_jax.sharding import make_mesh
from tests.model_fixtures import build, inputs_from_batch, random_batch, tiny_config


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config(**{"shape.latent_frames": 2, "shape.latent_height": 4, "shape.latent_width": 4})
    model = build(cfg)
    batch = random_batch(cfg, batch_size=1)
    inputs = inputs_from_batch(batch)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), inputs, jnp.zeros((1,)))["params"])
    return model, randomize_np(params), inputs, jax.jit(model.apply)


def randomize_np(params, seed: int = 1, scale: float = 0.2):
    """Every param random (zero-inits included) so every pathway acts; numpy draws, no compile."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + scale * rng.standard_normal(x.shape).astype(np.float32), params)


_GUIDED: dict[str, object] = {}


def guided_fn(model, mode_name: str):
    """One compiled guided velocity per mode for the whole module (compiles dominate these tests)."""
    if mode_name not in _GUIDED:
        guided = mode_name == "pose_guided"
        mode = guidance_mode("pose", pose_guidance=True) if guided else guidance_mode(mode_name)
        _GUIDED[mode_name] = make_guided_velocity(model, mode)
    return _GUIDED[mode_name]


def _on(mask) -> set[str]:
    return {name for name, m in zip(CONDITIONS, mask, strict=True) if m}


def test_audio_mode_branches_drop_text_and_audio_and_never_use_pose():
    mode = guidance_mode("audio")
    uncond, text, full = map(_on, mode.branch_masks)
    assert uncond == {"reference", "motion"}
    assert text == {"text", "reference", "motion"}
    assert full == {"text", "reference", "audio", "motion"}


def test_pose_mode_disables_audio_and_combined_mode_keeps_pose_in_every_branch():
    pose = [_on(m) for m in guidance_mode("pose").branch_masks]
    assert all("audio" not in m and "pose" in m for m in pose)
    assert pose[-1] == {"text", "reference", "pose", "motion"} and "text" not in pose[0]
    combined = [_on(m) for m in guidance_mode("combined").branch_masks]
    assert all("pose" in m for m in combined)
    assert combined[-1] == set(CONDITIONS)
    with pytest.raises(ValueError, match="guidance mode"):
        guidance_mode("video")


def test_pose_guided_mode_drops_pose_like_audio_mode_drops_audio_and_only_in_pose_mode():
    mode = guidance_mode("pose", pose_guidance=True)
    uncond, text, full = map(_on, mode.branch_masks)
    assert uncond == {"reference", "motion"}
    assert text == {"text", "reference", "motion"}
    assert full == {"text", "reference", "pose", "motion"}
    assert mode.guided == "pose" and guidance_mode("audio").guided == "audio"
    assert guidance_mode("pose").guided == ""  # two branches: no second scale
    with pytest.raises(ValueError, match="pose mode only"):
        guidance_mode("combined", pose_guidance=True)


def test_combine_follows_the_documented_formula():
    v_u, v_t, v_f = 1.0, 3.0, 7.0
    branches = jnp.asarray([v_u, v_t, v_f]).reshape(3, 1)
    got = combine(branches, 2.0, 0.5)
    np.testing.assert_allclose(np.asarray(got), [v_u + 2.0 * (v_t - v_u) + 0.5 * (v_f - v_t)])
    got2 = combine(branches[jnp.array([0, 2])], 4.0, 123.0)  # pose mode: no audio term
    np.testing.assert_allclose(np.asarray(got2), [v_u + 4.0 * (v_f - v_u)])


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("constant", [5.0, 5.0, 5.0, 5.0, 5.0]),
        ("linear", [5.0, 4.0, 3.0, 2.0, 1.0]),
        ("cosine", [5.0, 4.41421, 3.0, 1.58579, 1.0]),
    ],
)
def test_cfg_schedules_give_the_documented_values(kind, expected):
    np.testing.assert_allclose(cfg_schedule(kind, 5.0, 1.0, 5), expected, atol=1e-5)


def test_cfg_schedule_floor_never_raises_a_scale_and_one_step_uses_the_start():
    np.testing.assert_allclose(cfg_schedule("linear", 1.0, 2.0, 3), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(cfg_schedule("cosine", 4.0, 1.0, 1), [4.0])
    with pytest.raises(ValueError, match="cfg_schedule"):
        cfg_schedule("exp", 4.0, 1.0, 3)


@pytest.mark.parametrize("mode_name", ["audio", "pose", "pose_guided"])
def test_cfg_with_all_scales_one_equals_fully_conditioned_prediction(tiny, mode_name):
    model, params, inputs, apply = tiny
    mode = guidance_mode("pose", True) if mode_name == "pose_guided" else guidance_mode(mode_name)
    t = jnp.asarray([0.6])
    guided = guided_fn(model, mode_name)(params, inputs, t, jnp.float32(1.0), jnp.float32(1.0))
    full = dict(inputs, condition_mask=jnp.asarray([mode.full_mask]))
    v_full = apply({"params": params}, full, t)
    np.testing.assert_allclose(np.asarray(guided), np.asarray(v_full), rtol=1e-5, atol=1e-4)
    # and guidance does something: a larger scale moves the prediction
    strong = guided_fn(model, mode_name)(params, inputs, t, jnp.float32(4.0), jnp.float32(4.0))
    assert float(jnp.max(jnp.abs(strong - v_full))) > 1e-3


def test_batched_branches_equal_separate_forward_passes(tiny):
    model, params, inputs, apply = tiny
    mode = guidance_mode("audio")
    t = jnp.asarray([0.3])
    guided = guided_fn(model, "audio")(params, inputs, t, jnp.float32(4.0), jnp.float32(2.5))
    separate = combine(branch_velocities(apply, params, inputs, t, mode), 4.0, 2.5)
    np.testing.assert_allclose(np.asarray(guided), np.asarray(separate), atol=1e-4)


def test_branches_sharded_over_an_8_device_data_mesh_match_one_device(tiny):
    model, params, inputs, apply = tiny
    mode = guidance_mode("audio")
    t = jnp.asarray([0.3])
    mesh = make_mesh(dict(data=-1, fsdp=1, tensor=1))
    assert mesh.shape["data"] == 8  # 3 branches, padded to 8 rows
    sharded = make_guided_velocity(model, mode, mesh)(params, inputs, t, jnp.float32(3.0), jnp.float32(2.0))
    single = guided_fn(model, "audio")(params, inputs, t, jnp.float32(3.0), jnp.float32(2.0))
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), atol=1e-4)
