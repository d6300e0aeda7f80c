"""benchmarks/dit_conditions.py: its figures respond to a model's use of motion frames and audio."""

from __future__ import annotations

import numpy as np

from benchmarks.dit_conditions import condition_effects
from tests.model_fixtures import randomize, tiny_model_and_params


def test_fresh_model_ignores_motion_and_audio_and_copy_error_is_exact():
    model, batch, params = tiny_model_and_params()  # zero-initialised condition paths
    out = condition_effects(lambda p, i, t: model.apply({"params": p}, i, t), params, [batch], [0.5])
    assert out["audio_effect"] == 0.0
    assert out["x0_mse_motion_on_audio_off"] == out["x0_mse_motion_off_audio_off"]
    z = batch["latents"]
    np.testing.assert_allclose(out["copy_mse"], np.mean((z[:, 1] - z[:, -1]) ** 2), rtol=1e-6)
    np.testing.assert_allclose(
        out["true_change"], np.abs(z[:, -1] - z[:, 1]).max(axis=(1, 2, 3)).mean(), rtol=1e-6
    )


def test_model_with_live_condition_paths_shows_motion_and_audio_effects():
    model, batch, params = tiny_model_and_params()
    params = randomize(params)  # every pathway, zero-inits included, now has an effect
    out = condition_effects(lambda p, i, t: model.apply({"params": p}, i, t), params, [batch], [0.3, 0.9])
    assert out["audio_effect"] > 1e-3
    assert abs(out["x0_mse_motion_on_audio_off"] - out["x0_mse_motion_off_audio_off"]) > 1e-4
