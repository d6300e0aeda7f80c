"""benchmarks/dit_conditions.py: its figures respond to a model's use of motion frames and audio."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.dit_conditions import condition_effects
from tests.model_fixtures import build, inputs_from_batch, random_batch, randomize, tiny_config


def _setup():
    cfg = tiny_config()
    model = build(cfg)
    batch = random_batch(cfg, 2)
    t = jnp.array([0.5, 0.5])
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), inputs_from_batch(batch), t)["params"])
    return model, batch, params


def test_fresh_model_ignores_motion_and_audio_and_copy_error_is_exact():
    model, batch, params = _setup()  # zero-initialised condition channels and audio projections
    out = condition_effects(lambda p, i, t: model.apply({"params": p}, i, t), params, [batch], [0.5])
    assert out["audio_effect"] == 0.0
    assert out["x0_mse_motion_on_audio_off"] == out["x0_mse_motion_off_audio_off"]
    z = batch["latents"]
    np.testing.assert_allclose(out["copy_mse"], np.mean((z[:, 1] - z[:, -1]) ** 2), rtol=1e-6)
    np.testing.assert_allclose(
        out["true_change"], np.abs(z[:, -1] - z[:, 1]).max(axis=(1, 2, 3)).mean(), rtol=1e-6
    )


def test_model_with_live_condition_paths_shows_motion_and_audio_effects():
    model, batch, params = _setup()
    params = randomize(params)  # every pathway, zero-inits included, now has an effect
    out = condition_effects(lambda p, i, t: model.apply({"params": p}, i, t), params, [batch], [0.3, 0.9])
    assert out["audio_effect"] > 1e-3
    assert abs(out["x0_mse_motion_on_audio_off"] - out["x0_mse_motion_off_audio_off"]) > 1e-4
