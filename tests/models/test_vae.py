"""Tests of the causal 3D VAE (omnihuman_jax/models/vae.py), its losses and its diffusers-format loader.

Tiny 3-block config (8x spatial, 4x temporal) with random weights; no torch needed here.
"""

from __future__ import annotations

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from omnihuman_jax import vae_losses
from omnihuman_jax.interop.diffusers_vae import WEIGHTS_NAME, load_vae, save_vae
from omnihuman_jax.models import vae as V

CFG = V.VAEConfig(
    latent_channels=4, block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=2, shift_factor=0.1
)


@pytest.fixture(scope="module")
def params():
    p = V.init_vae(CFG, jax.random.PRNGKey(0))
    # random norm affine parameters, so that a wrongly used statistic cannot hide behind scale 1 / bias 0
    leaves, tree = jax.tree_util.tree_flatten_with_path(p)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    new = [
        v + 0.2 * jax.random.normal(k, v.shape) if path[-1].key in ("scale", "bias") else v
        for (path, v), k in zip(leaves, keys, strict=True)
    ]
    return jax.tree_util.tree_unflatten(tree, new)


def _video(frames: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).uniform(-1, 1, (1, frames, size, size, 3)).astype(np.float32)


def _max_err(a: jax.Array, b: jax.Array) -> float:
    return float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))))


@pytest.mark.parametrize("frames", [1, 5])
def test_encode_decode_shapes_follow_one_plus_four_k(params, frames):
    z = V.encode_video(CFG, params, _video(frames))
    t = 1 + (frames - 1) // 4
    assert z.shape == (1, t, 2, 2, 4)
    assert V.decode_latents(CFG, params, z).shape == (1, frames, 16, 16, 3)


def test_encode_rejects_frame_count_not_one_plus_four_k(params):
    with pytest.raises(ValueError, match="F = 1 \\+ 4 k"):
        V.encode_video(CFG, params, _video(4))
    with pytest.raises(ValueError, match="multiples of 8"):
        V.encode_video(CFG, params, _video(1, size=12))
    with pytest.raises(ValueError, match="convert to float"):
        V.encode_video(CFG, params, np.zeros((1, 1, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="chunk_frames=3"):
        V.encode_video(CFG, params, _video(5), chunk_frames=3)


def test_logical_axes_cover_every_parameter():
    specs = V.vae_logical_axes(CFG)
    params = V.init_vae(CFG, jax.random.PRNGKey(0))
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    spec_of = dict(jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0])
    for path, leaf in flat:
        spec = spec_of[path]
        assert len(spec) == leaf.ndim, path
        assert set(spec) <= {"conv_in", "conv_out", "norm", "null"}, (path, spec)
    assert specs["encoder"]["conv_in"]["conv"]["kernel"] == P("null", "null", "null", "conv_in", "conv_out")


def test_chunked_encode_equals_full_encode(params):
    x = _video(13, seed=1)
    full = V.encode_video(CFG, params, x)
    chunked = V.encode_video(CFG, params, x, chunk_frames=4)  # chunks of (5, 4, 4) frames
    err = _max_err(chunked, full)
    assert err < 1e-5, f"max abs error {err}"


def test_chunked_decode_equals_full_decode(params):
    z = jax.random.normal(jax.random.PRNGKey(2), (1, 4, 2, 2, 4))
    full = V.decode_latents(CFG, params, z)
    chunked = V.decode_latents(CFG, params, z, chunk_frames=2)  # chunks of (3, 1) latent frames
    err = _max_err(chunked, full)
    assert err < 1e-5, f"max abs error {err}"


def test_per_chunk_statistics_mode_is_only_approximate(params):
    # exact=False normalises each chunk with its own statistics; it must differ from the exact result,
    # which proves the exact mode's whole-video statistics are doing the work
    z = jax.random.normal(jax.random.PRNGKey(3), (1, 4, 2, 2, 4))
    full = V.decode_latents(CFG, params, z)
    approx = V.decode_latents(CFG, params, z, chunk_frames=2, exact=False)
    assert approx.shape == full.shape
    assert _max_err(approx, full) > 1e-3


def test_encode_video_applies_shift_and_scaling(params):
    x = _video(5, seed=4)
    mean, logvar = V.encode_moments(CFG, params, x)
    scaled = V.encode_video(CFG, params, x)
    np.testing.assert_allclose(scaled, (mean - 0.1) * CFG.scaling_factor, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        V.decode_latents(CFG, params, scaled), V.decode_unscaled(CFG, params, mean), rtol=1e-5, atol=1e-5
    )
    assert logvar.shape == mean.shape


def test_tiled_decode_of_spatially_constant_latents_equals_untiled(params):
    # a spatially constant input makes every tile see the same statistics, so tiling + blending must
    # reproduce the untiled frames exactly: this checks tile placement and the blend weights
    z = jnp.broadcast_to(jax.random.normal(jax.random.PRNGKey(5), (1, 2, 1, 1, 4)), (1, 2, 6, 6, 4))
    full = V.decode_latents(CFG, params, z)
    tiled = V.decode_latents(CFG, params, z, tile_size=4, tile_overlap=2)
    err = _max_err(tiled, full)
    assert err < 1e-4, f"max abs error {err}"


def test_tiled_decode_is_close_to_untiled(params):
    # tiles normalise with their own statistics (as in diffusers), so tiled != untiled; with statistically
    # uniform latents and tiles well above the receptive field the difference stays small (~10 % measured;
    # misplaced or badly blended tiles give O(1))
    z = jax.random.normal(jax.random.PRNGKey(6), (1, 1, 24, 24, 4))
    full = V.decode_latents(CFG, params, z)
    tiled = V.decode_latents(CFG, params, z, tile_size=16, tile_overlap=8)
    assert tiled.shape == full.shape == (1, 1, 192, 192, 3)
    rel = float(jnp.mean(jnp.abs(tiled - full)) / jnp.mean(jnp.abs(full)))
    assert rel < 0.2, f"mean relative deviation {rel}"


def test_ssim_of_identical_images_is_one_and_drops_with_noise():
    x = jnp.asarray(_video(2, size=24))
    np.testing.assert_allclose(vae_losses.ssim(x, x), np.ones((1, 2)), atol=1e-5)
    noisy = x + 0.5 * jax.random.normal(jax.random.PRNGKey(0), x.shape)
    assert float(vae_losses.ssim(x, noisy).max()) < 0.9
    assert float(vae_losses.ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-5)


def test_motion_weighted_l1_counts_only_pixels_that_move():
    # one pixel moves between frames 1 and 2: frames 1 and 2 weigh it by the change (0.8), nothing else weighs
    target = jnp.zeros((1, 4, 3, 3, 3)).at[:, 2:, 1, 1, :].set(0.8)
    still_error = target.at[:, :, 0, 0, :].add(0.5)  # error on a still pixel only
    assert float(vae_losses.motion_weighted_l1(still_error, target)) == pytest.approx(0.0, abs=1e-6)
    moving_error = target.at[:, 1, 1, 1, :].add(0.3).at[:, 2, 1, 1, :].add(-0.1)
    # weighted mean of |err| over frames 1 and 2 at the moving pixel (equal weights): (0.3 + 0.1) / 2
    assert float(vae_losses.motion_weighted_l1(moving_error, target)) == pytest.approx(0.2, rel=1e-4)
    frozen = jnp.broadcast_to(target[:, :1], target.shape)  # a reconstruction that repeats frame 0
    assert float(vae_losses.motion_weighted_l1(frozen, target)) == pytest.approx(0.4, rel=1e-4)
    assert float(vae_losses.motion_weighted_l1(target[:, :1] + 1.0, target[:, :1])) == 0.0  # single frame


def test_region_weighted_l1_is_the_mean_error_inside_the_region_and_zero_without_one():
    target = jnp.zeros((1, 2, 4, 4, 3))
    pred = target.at[:, :, 0, 0, :].add(0.6).at[:, 0, 3, 3, :].add(0.2)  # errors in two places
    region = jnp.zeros((1, 2, 4, 4)).at[:, 0, 3, 3].set(1.0).at[:, 1, 3, 3].set(1.0)
    # the region holds (frame 0, 3, 3), error 0.2, and (frame 1, 3, 3), error 0: mean 0.1
    assert float(vae_losses.region_weighted_l1(pred, target, region)) == pytest.approx(0.1, rel=1e-4)
    assert float(vae_losses.region_weighted_l1(pred, target, jnp.zeros_like(region))) == 0.0
    loss, parts = vae_losses.vae_loss(
        pred, target, jnp.zeros(4), jnp.zeros(4), region=region, region_l1_weight=3.0
    )
    plain, plain_parts = vae_losses.vae_loss(pred, target, jnp.zeros(4), jnp.zeros(4))
    assert "region_l1" not in plain_parts
    assert float(loss - plain) == pytest.approx(3.0 * float(parts["region_l1"]), rel=1e-5)
    with pytest.raises(ValueError, match="region map"):
        vae_losses.vae_loss(pred, target, jnp.zeros(4), jnp.zeros(4), region_l1_weight=1.0)


def test_temporal_region_l1_charges_a_group_mean_reconstruction_that_the_plain_l1_barely_sees():
    """A mouth pixel that opens and closes within 4 frames, given back as its mean: the temporal term is the
    mean error of the frame-to-frame changes in the region; a perfect or static-offset copy costs nothing."""
    opening = jnp.array([0.0, 1.0, 0.0, 1.0])  # (F,) one pixel's value
    target = jnp.zeros((1, 4, 2, 2, 3)).at[:, :, 0, 0, :].set(opening[None, :, None])
    pred = jnp.zeros_like(target).at[:, :, 0, 0, :].set(0.5)  # the group mean
    region = jnp.zeros((1, 4, 2, 2)).at[:, :, 0, 0].set(1.0)
    # changes: target +1, -1, +1; pred 0, 0, 0 -> mean |error| 1 over the region's 3 changes
    assert float(vae_losses.temporal_region_l1(pred, target, region)) == pytest.approx(1.0, rel=1e-4)
    assert float(vae_losses.temporal_region_l1(target + 0.3, target, region)) == pytest.approx(0.0, abs=1e-6)
    assert float(vae_losses.temporal_region_l1(pred, target, jnp.zeros_like(region))) == 0.0
    assert float(vae_losses.temporal_region_l1(pred[:, :1], target[:, :1], region[:, :1])) == 0.0
    loss, parts = vae_losses.vae_loss(
        pred, target, jnp.zeros(4), jnp.zeros(4), region=region, temporal_l1_weight=2.0
    )
    plain, _ = vae_losses.vae_loss(pred, target, jnp.zeros(4), jnp.zeros(4))
    assert float(loss - plain) == pytest.approx(2.0 * float(parts["temporal_l1"]), rel=1e-5)
    with pytest.raises(ValueError, match="region map"):
        vae_losses.vae_loss(pred, target, jnp.zeros(4), jnp.zeros(4), temporal_l1_weight=1.0)


def test_vae_loss_adds_the_motion_term_only_when_weighted():
    target = jnp.zeros((1, 3, 16, 16, 3)).at[:, 1:, 4:8, 4:8, :].set(1.0)
    pred = jnp.broadcast_to(target[:, :1], target.shape)
    mean = logvar = jnp.zeros((1, 1, 2, 2, 4))
    plain, parts = vae_losses.vae_loss(pred, target, mean, logvar)
    assert "motion_l1" not in parts
    weighted, parts = vae_losses.vae_loss(pred, target, mean, logvar, motion_l1_weight=2.0)
    # the block moves between frames 0 and 1 only: frame 0 (error 0) and frame 1 (error 1) weigh it equally
    assert float(parts["motion_l1"]) == pytest.approx(0.5, rel=1e-4)
    assert float(weighted - plain) == pytest.approx(1.0, rel=1e-4)


def test_kl_of_standard_normal_posterior_is_zero_and_matches_closed_form():
    zeros = jnp.zeros((2, 3, 2, 2, 4))
    np.testing.assert_allclose(vae_losses.kl_divergence(zeros, zeros), np.zeros(2), atol=1e-7)
    mean, logvar = jnp.full((1, 1), 1.5), jnp.full((1, 1), np.log(0.5))
    expected = 0.5 * (1.5**2 + 0.5 - 1 - np.log(0.5))
    np.testing.assert_allclose(vae_losses.kl_divergence(mean, logvar), [expected], rtol=1e-6)


def test_vae_loss_is_zero_for_perfect_reconstruction_and_standard_posterior():
    x = jnp.asarray(_video(1, size=16))
    z = jnp.zeros((1, 1, 2, 2, 4))
    loss, parts = vae_losses.vae_loss(x, x, z, z)
    assert float(loss) == pytest.approx(0.0, abs=1e-5)
    assert set(parts) == {"l1", "ssim", "kl"}
    loss_bad, _ = vae_losses.vae_loss(x, -x, z, z)
    assert float(loss_bad) > 0.5


def test_save_then_load_round_trips_params_and_config(params, tmp_path):
    save_vae(tmp_path / "vae", CFG, params)
    cfg, loaded = load_vae(tmp_path / "vae")
    assert cfg == CFG
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileExistsError, match="overwrite"):
        save_vae(tmp_path / "vae", CFG, params)


def test_load_errors_name_the_missing_or_broken_file(params, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_vae(tmp_path / "nowhere")
    folder = tmp_path / "vae"
    save_vae(folder, CFG, params)
    weights = folder / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{WEIGHTS_NAME}.*truncated"):
        load_vae(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        load_vae(folder)


def test_load_reports_shape_mismatch_and_unmapped_tensors(params, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "vae"
    save_vae(folder, CFG, params)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    tensors["decoder.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(folder / WEIGHTS_NAME))
    with pytest.warns(UserWarning, match="decoder.extra.weight"):
        load_vae(folder)
    with pytest.raises(ValueError, match="decoder.extra.weight"):
        load_vae(folder, strict=True)

    config = json.loads((folder / "config.json").read_text())
    config["latent_channels"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="tensor .* has shape"):
            load_vae(folder)


@pytest.mark.parametrize("strides", [(1, 1, 1), (1, 2, 2), (2, 1, 1), (2, 2, 2)])
def test_conv3d_as_2d_equals_native_3d_convolution(strides):
    from omnihuman_jax.models.vae_blocks import conv3d_as_2d, conv3d_native

    x = jax.random.normal(jax.random.key(0), (2, 7, 10, 12, 3))  # (B, F, H, W, C)
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 3, 5))
    want = conv3d_native(x, kernel, strides)
    got = conv3d_as_2d(x, kernel, strides)
    assert got.shape == want.shape
    err = float(jnp.max(jnp.abs(got - want)))
    assert err < 1e-4, f"max error {err}"


@pytest.mark.parametrize("strides", [(1, 1, 1), (1, 2, 2), (2, 2, 2)])
def test_conv3d_of_repeated_frame_equals_native_3d_convolution(strides):
    from omnihuman_jax.models.vae_blocks import conv3d_native, conv3d_repeated_frame

    frame = jax.random.normal(jax.random.key(0), (2, 1, 10, 12, 3))  # (B, 1, H, W, C)
    x = jnp.repeat(frame, 3, axis=1)  # a single frame after causal replicate padding
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 3, 5))
    want = conv3d_native(x, kernel, strides)
    got = conv3d_repeated_frame(x, kernel, strides)
    assert got.shape == want.shape
    err = float(jnp.max(jnp.abs(got - want)))
    assert err < 1e-4, f"max error {err}"


def test_ssim_blur_filters_each_channel_separably_like_numpy():
    from omnihuman_jax.vae_losses import _blur, _gaussian_window

    x = np.random.default_rng(0).standard_normal((2, 14, 13, 3)).astype(np.float32)  # (N, H, W, C)
    window = np.asarray(_gaussian_window(5, 1.5))
    rows = np.apply_along_axis(lambda v: np.convolve(v, window[::-1], "valid"), 1, x)
    want = np.apply_along_axis(lambda v: np.convolve(v, window[::-1], "valid"), 2, rows)
    got = np.asarray(_blur(jnp.asarray(x), jnp.asarray(window)))
    assert got.shape == want.shape == (2, 10, 9, 3)
    err = float(np.max(np.abs(got - want)))
    assert err < 1e-5, f"max error {err}"
