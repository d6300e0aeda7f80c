"""omnihuman_jax.vae_train_step: causal inflation of an image-trained VAE, and the train step's loss terms.

Tiny random VAE with random norm affines and the mid-block attention on; no torch needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from omnihuman_jax import vae_train_step as vts
from omnihuman_jax.models import vae as V

CFG = V.VAEConfig(latent_channels=4, block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=2)


def _params():
    p = V.init_vae(CFG, jax.random.PRNGKey(0))
    leaves, tree = jax.tree_util.tree_flatten_with_path(p)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree,
        [
            v + 0.2 * jax.random.normal(k, v.shape) if path[-1].key in ("scale", "bias") else v
            for (path, v), k in zip(leaves, keys, strict=True)
        ],
    )


def _clip(frames: int = 5, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.RandomState(seed).uniform(-1, 1, (1, frames, 16, 16, 3)), jnp.float32)


def _roundtrip(params, x: jax.Array) -> jax.Array:
    mean, _ = V.encode_moments(CFG, params, x)
    return V.decode_unscaled(CFG, params, mean)


def test_causal_inflation_moves_each_kernels_tap_sum_onto_its_last_tap():
    params = _params()
    inflated = vts.inflate_causal(params)
    before = params["encoder"]["conv_in"]["conv"]["kernel"]  # (3, 3, 3, 3, 8)
    after = inflated["encoder"]["conv_in"]["conv"]["kernel"]
    np.testing.assert_allclose(after[-1], before.sum(axis=0), rtol=1e-6)
    assert not np.any(after[:-1])
    pointwise = inflated["quant_conv"]["kernel"]  # (1, 1, 1, C, C): no temporal taps, left alone
    np.testing.assert_array_equal(pointwise, params["quant_conv"]["kernel"])


def test_causal_inflation_keeps_the_single_frame_reconstruction():
    params, x = _params(), _clip(frames=1)
    before, after = _roundtrip(params, x), _roundtrip(vts.inflate_causal(params), x)
    err = float(jnp.max(jnp.abs(before - after)))
    assert err < 1e-4, f"single-frame round trip changed by up to {err}"


def test_inflated_decoder_holds_each_latent_frame_over_its_four_video_frames():
    z = jnp.asarray(np.random.RandomState(2).normal(size=(1, 2, 2, 2, 4)), jnp.float32)
    random_taps = V.decode_unscaled(CFG, _params(), z)[0]  # (5, 16, 16, 3)
    inflated = V.decode_unscaled(CFG, vts.inflate_causal(_params()), z)[0]
    spread = float(jnp.max(jnp.abs(inflated[1:] - inflated[1])))
    assert spread < 1e-5, f"frames 1-4 of the inflated decoder differ by up to {spread}"
    assert float(jnp.max(jnp.abs(random_taps[1:] - random_taps[1]))) > 1e-2  # the property is not free


def test_inflated_encoder_codes_latent_frame_1_from_frame_4_not_frames_1_and_3():
    """The stride-2 windows' last taps pick frames 2 then 4; frames 1 and 3 reach the latents only through
    the norms' statistics pooled over all frames, which a swap of the two leaves unchanged."""
    params = vts.inflate_causal(_params())
    x = _clip()
    swapped_odd = x.at[:, 1].set(x[:, 3]).at[:, 3].set(x[:, 1])  # same pooled statistics, frames 1 <-> 3
    mean, _ = V.encode_moments(CFG, params, x)
    mean_swapped, _ = V.encode_moments(CFG, params, swapped_odd)
    assert float(jnp.max(jnp.abs(mean - mean_swapped))) < 1e-5
    swapped_even = x.at[:, 2].set(x[:, 4]).at[:, 4].set(x[:, 2])  # frame 4 is what latent 1 encodes
    mean_even, _ = V.encode_moments(CFG, params, swapped_even)
    assert float(jnp.max(jnp.abs(mean[:, 1] - mean_even[:, 1]))) > 1e-2


def _frozen_state_and_clip() -> tuple[optax.GradientTransformation, vts.VAETrainState, jax.Array]:
    """A zero-rate optimizer, its train state and one random 5-frame clip (1, 5, 16, 16, 3) uint8."""
    params = V.init_vae(CFG, jax.random.PRNGKey(0))
    opt = optax.sgd(0.0)
    state = vts.VAETrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt.init(params),
        nonfinite_total=jnp.zeros((), jnp.int32),
    )
    clip = jnp.asarray(np.random.RandomState(3).randint(0, 256, (1, 5, 16, 16, 3)), jnp.uint8)
    return opt, state, clip


def test_nonfinite_vae_step_keeps_params_and_optimizer_state_and_is_counted():
    _, state, clip = _frozen_state_and_clip()
    opt = optax.adam(1e-2)
    state = state.replace(opt_state=opt.init(state.params))
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    nan_step = vts.make_vae_train_step(CFG, opt, vts.VAELossWeights(kl=float("nan")), seed=0)
    kept, metrics = jax.jit(nan_step)(state, clip)
    assert int(metrics["nonfinite_total"]) == 1 and int(kept.step) == 1
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves((kept.params, kept.opt_state)), strict=True):
        np.testing.assert_array_equal(a, b)
    moved, metrics = jax.jit(vts.make_vae_train_step(CFG, opt, vts.VAELossWeights(), seed=0))(kept, clip)
    assert int(metrics["nonfinite_total"]) == 1
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before[0]), jax.tree.leaves(moved.params), strict=True)
    )


def test_train_step_adds_the_weighted_motion_l1_on_clips_only():
    opt, state, clip = _frozen_state_and_clip()
    _, plain = vts.make_vae_train_step(CFG, opt, vts.VAELossWeights(), seed=0)(state, clip)
    step = vts.make_vae_train_step(CFG, opt, vts.VAELossWeights(motion_l1=2.0), seed=0)
    _, weighted = step(state, clip)
    assert "motion_l1" not in plain and float(weighted["motion_l1"]) > 0
    np.testing.assert_allclose(weighted["loss"] - plain["loss"], 2.0 * weighted["motion_l1"], rtol=1e-5)
    _, image = step(state, clip[:, :1])  # the image phase: no frame-to-frame change to weight
    assert float(image["motion_l1"]) == 0.0


def test_train_step_adds_the_weighted_region_l1_over_the_given_map():
    opt, state, clip = _frozen_state_and_clip()
    region = jnp.zeros((1, 5, 16, 16)).at[:, :, 4:8, 4:8].set(1.0)
    _, plain = vts.make_vae_train_step(CFG, opt, vts.VAELossWeights(), seed=0)(state, clip)
    step = vts.make_vae_train_step(CFG, opt, vts.VAELossWeights(region_l1=2.0), seed=0)
    _, weighted = step(state, clip, region)
    assert "region_l1" not in plain and float(weighted["region_l1"]) > 0
    np.testing.assert_allclose(weighted["loss"] - plain["loss"], 2.0 * weighted["region_l1"], rtol=1e-5)


def test_vae_lr_schedule_restarts_its_warmup_and_cosine_when_the_video_phase_starts():
    from ml_collections import ConfigDict

    opt = ConfigDict(dict(lr=1e-3, warmup_steps=10, decay_steps=0, end_lr_factor=0.1))
    plain = vts.vae_lr_schedule(opt, 200)
    restarted = vts.vae_lr_schedule(opt, 200, restart_at=100)
    for step in (0, 10, 50, 99):  # the image phase: its own cosine over 100 steps, decayed by step 99
        assert float(restarted(step)) == pytest.approx(float(vts.lr_schedule(opt, 100)(step)), rel=1e-6)
    assert float(restarted(99)) < float(plain(99))
    assert float(restarted(100)) == 0.0  # warmup again
    assert float(restarted(110)) == pytest.approx(1e-3, rel=1e-6)  # the peak again
    assert float(restarted(199)) < 2e-4
    for restart_at in (0, 200):  # no video phase inside the run: the one schedule
        assert float(vts.vae_lr_schedule(opt, 200, restart_at)(150)) == float(plain(150))
