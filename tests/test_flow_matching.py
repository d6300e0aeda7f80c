"""The flow-matching objective's optional motion and mouth-region weighting (flow_matching, train_step)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omnihuman_jax import flow_matching as fm
from omnihuman_jax.batch import sample_model_inputs
from omnihuman_jax.train_step import make_loss_fn
from tests.model_fixtures import build, random_batch, tiny_config


def _clip_with_one_moving_position(b: int = 2, t: int = 3, h: int = 4, w: int = 4, c: int = 2) -> np.ndarray:
    z = np.tile(np.random.default_rng(0).normal(size=(b, 1, h, w, c)), (1, t, 1, 1, 1))  # static
    z[:, :, 1, 2] += np.arange(t, dtype=np.float64)[None, :, None]  # (1, 2) moves by 1 per frame
    return z.astype(np.float32)


def test_motion_weights_favour_moving_positions_and_average_one_per_sample():
    z = _clip_with_one_moving_position()
    w = np.asarray(fm.motion_weights(jnp.asarray(z), strength=1.0))  # (B, T, h, w)
    assert w.shape == z.shape[:4]
    np.testing.assert_allclose(w.mean(axis=(1, 2, 3)), 1.0, rtol=1e-4)  # eps in the mean
    # d = 1 at (1, 2) on frames 1, 2 and 0 elsewhere: mean d = 2 / 48, so w = (1 + 24) / 2 there, 1/2 else.
    np.testing.assert_allclose(w[:, 1:, 1, 2], 12.5, rtol=1e-4)
    np.testing.assert_allclose(w[:, 0, 1, 2], 0.5, rtol=1e-5)  # frame 0 has no previous frame
    np.testing.assert_allclose(w[:, :, 0, 0], 0.5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(fm.motion_weights(jnp.asarray(z), strength=0.0)), 1.0)


def test_weighted_per_sample_loss_scales_errors_by_position_weight():
    z = jnp.asarray(_clip_with_one_moving_position())
    motion = jnp.zeros(z.shape[:2], bool)
    weights = fm.motion_weights(z, strength=1.0)
    err_moving = z.at[:, :, 1, 2].add(1.0)  # error 1 on every channel of the moving position only
    err_static = z.at[:, :, 0, 0].add(1.0)
    plain = np.asarray(fm.per_sample_loss(err_moving, z, motion))
    np.testing.assert_allclose(plain, 1.0 / 16, rtol=1e-5)  # one of 16 positions, all 3 frames
    np.testing.assert_allclose(
        fm.per_sample_loss(err_moving, z, motion, weights), (0.5 + 2 * 12.5) / 48, rtol=1e-4
    )
    np.testing.assert_allclose(fm.per_sample_loss(err_static, z, motion, weights), 0.5 / 16, rtol=1e-5)


def _loss_case(cfg):
    """A tiny model, its params and a batch with fixed flow draws (t = 0.5)."""
    model = build(cfg)
    batch = random_batch(cfg, 2)
    params = model.init(jax.random.key(0), sample_model_inputs(batch), jnp.zeros((2,)))["params"]
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    batch["_t"] = jnp.full((2,), 0.5)
    batch["_noise"] = jax.random.normal(jax.random.key(1), batch["latents"].shape)
    return model, params, batch


def _by_hand(model, params, batch, weights):
    """The per-sample loss recomputed outside the train step: the same prediction, the given weights."""
    from omnihuman_jax.conditions import INDEX, model_inputs

    x_t = fm.interpolate(batch["latents"], batch["_noise"], batch["_t"])
    pred = model.apply({"params": params}, model_inputs(batch, x_t), batch["_t"])
    motion = batch["motion_mask"].astype(bool) & batch["condition_mask"][:, INDEX["motion"], None]
    return fm.per_sample_loss(pred, fm.velocity_target(batch["latents"], batch["_noise"]), motion, weights)


def test_train_loss_uses_motion_weight_only_when_configured():
    cfg = tiny_config(batch_size=2)
    model, params, batch = _loss_case(cfg)
    batch["latents"] = batch["latents"].at[:, 1:, 0, 0].add(3.0)  # one position moves
    plain, _ = make_loss_fn(model, cfg)(params, batch)
    cfg.flow.motion_weight = 2.0
    weighted, per_sample = make_loss_fn(model, cfg)(params, batch)
    want = _by_hand(model, params, batch, fm.motion_weights(batch["latents"], 2.0))
    np.testing.assert_allclose(np.asarray(per_sample), np.asarray(want), rtol=1e-5)
    assert abs(float(weighted) - float(plain)) > 1e-4 * float(plain)


def test_motion_noise_draws_leave_other_draws_unchanged_and_noise_only_the_motion_input():
    from omnihuman_jax.train_step import draw_flow_noise

    cfg = tiny_config(batch_size=4)
    batch = random_batch(cfg, 4)
    batch["motion_mask"][:, :2] = True  # latent frames 0 and 1 given as motion frames
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    rng = jax.random.key(3)
    plain = draw_flow_noise(batch, rng, cfg, 1.0)
    assert "_motion_noise" not in plain
    cfg.flow.motion_noise = 0.5
    aug = draw_flow_noise(batch, rng, cfg, 1.0)
    np.testing.assert_array_equal(np.asarray(aug["_t"]), np.asarray(plain["_t"]))
    np.testing.assert_array_equal(np.asarray(aug["_noise"]), np.asarray(plain["_noise"]))
    sigma = np.asarray(aug["_motion_noise"]).std(axis=(1, 2, 3, 4))  # (B,) per-sample scale
    assert np.all(sigma > 0) and np.all(sigma < 0.6) and np.ptp(sigma) > 0.01  # U(0, 0.5) per sample

    model = build(cfg)
    params = model.init(jax.random.key(0), sample_model_inputs(random_batch(cfg, 4)), jnp.zeros((4,)))[
        "params"
    ]
    from tests.model_fixtures import randomize

    params = randomize(params)  # live motion channels
    loss_fn = make_loss_fn(model, cfg)
    l_aug, _ = loss_fn(params, aug)
    l_plain, _ = loss_fn(params, plain)
    assert abs(float(l_aug) - float(l_plain)) > 1e-6  # the motion input changed
    no_motion = {**aug, "condition_mask": aug["condition_mask"].at[:, 4].set(False)}
    l_a, _ = loss_fn(params, no_motion)
    l_p, _ = loss_fn(params, {**plain, "condition_mask": no_motion["condition_mask"]})
    np.testing.assert_allclose(float(l_a), float(l_p), rtol=1e-6)  # nothing else changed


def test_train_loss_weights_the_mouth_region_by_lip_weight_only_when_configured():
    cfg = tiny_config(batch_size=2)
    model, params, batch = _loss_case(cfg)
    lip = jnp.zeros(batch["latents"].shape[:-1]).at[0, :, 2:4, 3:5].set(1.0)  # sample 0 has a mouth
    batch["lip_mask"] = lip
    _, plain = make_loss_fn(model, cfg)(params, batch)
    cfg.flow.lip_weight = 9.0
    _, weighted = make_loss_fn(model, cfg)(params, batch)
    np.testing.assert_allclose(
        np.asarray(fm.region_loss_weights({"lip_mask": lip}, {"lip_mask": 9.0}))[0, :, 2, 3], 10.0
    )
    want = _by_hand(model, params, batch, 1.0 + 9.0 * lip)
    np.testing.assert_allclose(np.asarray(weighted), np.asarray(want), rtol=1e-5)
    assert float(weighted[0]) > 1.05 * float(plain[0])  # the mouth region counts 10x
    np.testing.assert_allclose(float(weighted[1]), float(plain[1]), rtol=1e-6)  # no landmarks: unchanged


def test_train_loss_adds_the_hand_weight_over_the_mouth_weight_where_regions_overlap():
    cfg = tiny_config(batch_size=2)
    model, params, batch = _loss_case(cfg)
    shape = batch["latents"].shape[:-1]
    batch["lip_mask"] = jnp.zeros(shape).at[0, :, 2:4, 3:5].set(1.0)
    batch["hand_mask"] = jnp.zeros(shape).at[0, :, 3:6, 4:6].set(1.0).at[1, :, 0:2, 0:2].set(1.0)
    cfg.flow.lip_weight, cfg.flow.hand_weight = 9.0, 4.0
    _, weighted = make_loss_fn(model, cfg)(params, batch)
    want = _by_hand(model, params, batch, 1.0 + 9.0 * batch["lip_mask"] + 4.0 * batch["hand_mask"])
    np.testing.assert_allclose(np.asarray(weighted), np.asarray(want), rtol=1e-5)
    cfg.flow.lip_weight = 0.0  # only the hands: the mouth mask in the batch is ignored
    _, hands = make_loss_fn(model, cfg)(params, batch)
    want = _by_hand(model, params, batch, 1.0 + 4.0 * batch["hand_mask"])
    np.testing.assert_allclose(np.asarray(hands), np.asarray(want), rtol=1e-5)
