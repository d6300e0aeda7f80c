"""benchmarks/audio_probe.py: the mouth block follows the mask; the probe finds audio's share of a change."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.audio_probe import crop, linear_probe, model_mouth_errors, mouth_patches
from tests.model_fixtures import randomize, tiny_model_and_params


def test_mouth_block_is_centred_on_the_mask_and_kept_inside_the_grid():
    latents = np.zeros((3, 3, 8, 8, 2), np.float32)
    mask = np.zeros((3, 3, 8, 8), np.float32)
    mask[0, -1, 3:5, 4:6] = 1  # centroid (3.5, 4.5): a 3 x 3 block from (2.5 -> 2, 3.5 -> 4)
    mask[1, -1, 7, 7] = 1  # at the corner: the block moves inside
    mask[2, 0, 4, 4] = 1  # a mouth only in another frame: not kept
    corners, keep = mouth_patches(latents, mask, 3)
    assert keep.tolist() == [True, True, False]
    assert corners[0].tolist() == [2, 5, 4, 7]
    assert corners[1].tolist() == [5, 8, 5, 8]
    x = np.arange(2 * 8 * 8 * 1, dtype=np.float32).reshape(2, 8, 8, 1)
    np.testing.assert_array_equal(crop(x, corners[:2])[1], x[1, 5:8, 5:8])


def test_mouth_block_larger_than_the_grid_is_refused():
    with pytest.raises(ValueError, match="larger than"):
        mouth_patches(np.zeros((1, 3, 4, 4, 1)), np.ones((1, 3, 4, 4)), 5)


def test_probe_finds_a_linear_audio_share_and_none_in_unrelated_audio():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(400, 9))
    weights = rng.normal(size=(9, 12))
    noise = 0.1 * rng.normal(size=(400, 12))
    related = linear_probe(feats, feats @ weights + noise)
    assert related["mouth_audio_linear_mse"] < 0.05 * related["mouth_copy_mse"]
    np.testing.assert_allclose(related["mouth_audio_linear_mse"], 0.01, rtol=0.3)  # the noise's variance
    unrelated = linear_probe(feats, noise + 1.0)
    assert unrelated["mouth_mean_mse"] < 0.02 < 0.9 < unrelated["mouth_copy_mse"]  # the mean change is found
    assert unrelated["mouth_audio_linear_mse"] >= 0.9 * unrelated["mouth_mean_mse"]


def test_probe_refuses_too_few_windows():
    with pytest.raises(ValueError, match="too few"):
        linear_probe(np.zeros((8, 9)), np.zeros((8, 3)))


def test_model_mouth_errors_respond_to_a_live_audio_path_only():
    model, batch, params = tiny_model_and_params()
    h, w = batch["latents"].shape[2:4]
    corners, keep = mouth_patches(batch["latents"], np.ones((2, 3, h, w), np.float32), 3)
    apply_fn = lambda p, i, tt: model.apply({"params": p}, i, tt)  # noqa: E731
    fresh = model_mouth_errors(apply_fn, params, [batch], [(corners, keep)], [0.5])
    assert fresh["mouth_x0_mse_audio_on"] == fresh["mouth_x0_mse_audio_off"]  # zero-initialised audio path
    live = model_mouth_errors(apply_fn, randomize(params), [batch], [(corners, keep)], [0.5])
    assert abs(live["mouth_x0_mse_audio_on"] - live["mouth_x0_mse_audio_off"]) > 1e-5
