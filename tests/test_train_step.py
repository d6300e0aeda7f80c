"""The sharded train step: 8 devices equal 1, params sharded per the rules, overfitting, NaN guard,
per-parameter learning-rate multipliers."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from omnihuman_jax import sharding as shd
from omnihuman_jax.batch import sample_model_inputs
from omnihuman_jax.config_checks import ConfigError, validate_config
from omnihuman_jax.train_state import (
    init_train_state,
    lr_multiplier_tree,
    lr_schedule,
    make_optimizer,
    param_path,
)
from omnihuman_jax.train_step import jit_train_step, make_train_step
from tests.model_fixtures import build, random_batch, tiny_config


def _setup(cfg, devices, mesh_sizes):
    mesh = shd.make_mesh(mesh_sizes, devices)
    rules = cfg.sharding.logical_axis_rules
    model = build(cfg)
    opt = make_optimizer(cfg.optimizer, cfg.total_steps)
    batch = random_batch(cfg, cfg.batch_size)
    state, sh = init_train_state(model, opt, sample_model_inputs(batch), cfg.seed, mesh, rules)
    step = jit_train_step(
        make_train_step(model, opt, cfg, 1.0, lr_schedule(cfg.optimizer, cfg.total_steps)),
        sh,
        batch,
        mesh,
        rules,
    )
    return mesh, state, step, batch


def _run(cfg, devices, mesh_sizes, n_steps):
    mesh, state, step, batch = _setup(cfg, devices, mesh_sizes)
    losses = []
    for _ in range(n_steps):
        state, m = step(state, shd.shard_batch(batch, mesh))
        losses.append(float(m["loss"]))
    return state, losses


def test_eight_device_mesh_equals_one_device_and_params_are_sharded():
    cfg = tiny_config(batch_size=8, **{"optimizer.warmup_steps": 0, "optimizer.lr": 1e-3})
    # Widen the MLP so the tensor axis has something to split, and fsdp the embed axis.
    s8, l8 = _run(cfg, jax.devices()[:8], dict(data=2, fsdp=2, tensor=2), 2)
    s1, l1 = _run(cfg, jax.devices()[:1], dict(data=1, fsdp=1, tensor=1), 2)
    np.testing.assert_allclose(l8, l1, rtol=2e-5)  # stated tolerance: fp32 reduction order differs
    flat8 = jax.tree_util.tree_flatten_with_path(s8.params)[0]
    flat1 = jax.tree.leaves(s1.params)
    # Stated tolerance: Adam normalises each gradient, so a reduction-order difference in a near-zero
    # gradient can move its update; we allow 5% of one step's update (lr * steps) per parameter.
    atol = 0.05 * 1e-3 * 2
    for (path, a), b in zip(flat8, flat1, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=0, err_msg=str(path))
    q = s8.params["transformer_blocks_0"]["attn"]["to_q"]["kernel"]
    assert q.sharding.spec == PartitionSpec("fsdp", "tensor")
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (32, 32)
    ff = s8.params["single_transformer_blocks_0"]["proj_mlp"]["kernel"]
    assert ff.sharding.spec == PartitionSpec("fsdp", "tensor")
    mu = s8.opt_state[1][0].mu["transformer_blocks_0"]["attn"]["to_q"]["kernel"]
    assert mu.sharding.spec == PartitionSpec("fsdp", "tensor")  # Adam moments follow the params


def test_loss_falls_when_overfitting_one_batch():
    cfg = tiny_config(
        batch_size=2,
        **{
            "optimizer.warmup_steps": 0,
            "optimizer.lr": 3e-3,
            "optimizer.decay_steps": 1000,
            "flow.logit_std": 0.5,
        },
    )
    _, losses = _run(cfg, jax.devices()[:1], dict(data=1, fsdp=1, tensor=1), 60)
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.6 * first, (first, last)


def test_nonfinite_batch_skips_update_and_is_counted():
    cfg = tiny_config(batch_size=2)
    mesh, state, step, batch = _setup(cfg, jax.devices()[:1], dict(data=1, fsdp=1, tensor=1))
    before = jax.tree.map(np.asarray, (state.params, state.opt_state, state.ema_params))
    bad = dict(batch, latents=np.full_like(batch["latents"], np.nan))
    state, m = step(state, shd.shard_batch(bad, mesh))
    assert int(m["nonfinite_total"]) == 1 and int(m["nonfinite_streak"]) == 1
    after = jax.tree.map(np.asarray, (state.params, state.opt_state, state.ema_params))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    state, m = step(state, shd.shard_batch(batch, mesh))
    assert int(m["nonfinite_streak"]) == 0 and int(m["nonfinite_total"]) == 1


def test_grad_accumulation_equals_full_batch_step():
    """2 microbatches of 2 give the same loss and update as one batch of 4 (same draws per sample)."""
    base = dict(batch_size=4, **{"optimizer.warmup_steps": 0, "optimizer.lr": 1e-3})
    s1, l1 = _run(tiny_config(**base), jax.devices()[:1], dict(data=1, fsdp=1, tensor=1), 1)
    sk, lk = _run(
        tiny_config(**base, **{"optimizer.grad_accum_steps": 2}),
        jax.devices()[:1],
        dict(data=1, fsdp=1, tensor=1),
        1,
    )
    np.testing.assert_allclose(lk, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(sk.params), jax.tree.leaves(s1.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=0.05 * 1e-3, rtol=0)  # 5% of an update


def test_lr_multipliers_scale_only_the_updates_of_matching_params():
    """`audio_=10`: one step moves every audio-module parameter 10x as far as without it, the rest alike."""
    base = dict(batch_size=2, **{"optimizer.warmup_steps": 0, "optimizer.lr": 1e-3})
    one = dict(data=1, fsdp=1, tensor=1)
    _, init, _, _ = _setup(tiny_config(**base), jax.devices()[:1], one)
    init = jax.tree.map(np.asarray, init.params)  # _run donates its state, so keep a host copy
    plain, _ = _run(tiny_config(**base), jax.devices()[:1], one, 1)
    fast, _ = _run(
        tiny_config(**base, **{"optimizer.lr_multipliers": "audio_=10"}), jax.devices()[:1], one, 1
    )
    flat = jax.tree_util.tree_flatten_with_path(init)[0]
    matched = 0
    for (path, p0), a, b in zip(
        flat, jax.tree.leaves(plain.params), jax.tree.leaves(fast.params), strict=True
    ):
        name = param_path(path)
        d_plain, d_fast = np.asarray(a) - p0, np.asarray(b) - p0
        if "audio_" in name:
            matched += 1
            # atol: the rounding of p0 + update, an ulp of p0 in each run and 10x in the scaled one
            ulp = np.spacing(np.abs(p0).astype(np.float32))
            np.testing.assert_allclose(
                d_fast, 10.0 * d_plain, rtol=1e-4, atol=float(12 * ulp.max()), err_msg=name
            )
        else:
            np.testing.assert_array_equal(d_fast, d_plain, err_msg=name)
    assert matched >= 4  # the projector and each block's cross-attention
    moved = [
        np.abs(np.asarray(a) - p0).max()
        for (_, p0), a in zip(flat, jax.tree.leaves(plain.params), strict=True)
    ]
    assert max(moved) > 0


@pytest.mark.parametrize(
    "spec, message",
    [("audio_", "REGEX=MULTIPLIER"), ("audio_=0", "must be positive"), ("audio_=fast", "REGEX=MULTIPLIER")],
)
def test_bad_lr_multipliers_fail_at_start_naming_the_key(spec, message):
    with pytest.raises(ConfigError, match=f"optimizer.lr_multipliers: .*{message}"):
        validate_config(tiny_config(**{"optimizer.lr_multipliers": spec}))


@pytest.mark.parametrize("key", ["flow.lip_weight", "flow.hand_weight"])
def test_negative_region_weight_fails_at_start_naming_the_key(key):
    with pytest.raises(ConfigError, match=f"{key}: must be >= 0"):
        validate_config(tiny_config(**{key: -1.0}))


def test_lr_multiplier_pattern_that_matches_no_parameter_is_an_error():
    params = {"transformer_blocks_0": {"audio_attn": {"to_out": {"kernel": np.zeros((2, 2))}}}}
    tree = lr_multiplier_tree(params, "audio_attn=3, to_out=5")  # the first matching rule wins
    assert tree["transformer_blocks_0"]["audio_attn"]["to_out"]["kernel"] == 3.0
    assert lr_multiplier_tree(params, "") is None
    with pytest.raises(ValueError, match="'pose_guider' matches no parameter path"):
        lr_multiplier_tree(params, "pose_guider=10")


@pytest.mark.parametrize("clip", [100.0, 0.5], ids=["below_clip", "clipped"])
def test_optimizer_given_the_grad_norm_equals_optax_clipping_and_computes_no_norm_itself(clip):
    """The step passes the norm it already has to the clipping: the same updates and state, to the bit,
    as optax.clip_by_global_norm computing it, and no reduction over the gradients left in the update."""
    import optax

    cfg = tiny_config()
    cfg.optimizer.grad_clip = clip
    opt = make_optimizer(cfg.optimizer, cfg.total_steps)
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(8, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
    grads = jax.tree.map(lambda p: np.asarray(rng.normal(size=p.shape), np.float32), params)
    state = opt.init(params)
    norm = optax.tree.norm(grads)
    assert (float(norm) > clip) == (clip == 0.5)
    given = opt.update(grads, state, params, grad_norm=norm)
    computed = opt.update(grads, state, params)  # optax's own clip_by_global_norm inside
    for a, b in zip(jax.tree.leaves(given), jax.tree.leaves(computed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def reductions(jaxpr) -> int:
        inner = [getattr(v, "jaxpr", v) for e in jaxpr.eqns for v in e.params.values()]
        nested = sum(reductions(j) for j in inner if hasattr(j, "eqns"))
        return nested + sum(e.primitive.name == "reduce_sum" for e in jaxpr.eqns)

    def update_jaxpr(**extra):
        return jax.make_jaxpr(lambda g: opt.update(g, state, params, **extra))(grads).jaxpr

    assert reductions(update_jaxpr()) > 0 and reductions(update_jaxpr(grad_norm=norm)) == 0


def test_update_of_a_plain_optax_transformation_ignores_the_grad_norm_it_cannot_take():
    """make_update passes the norm only to optimizers that take extra arguments (make_optimizer's)."""
    import optax

    from omnihuman_jax.train_step import make_update

    cfg = tiny_config()
    plain = optax.scale(-0.1)  # an optax.GradientTransformation without extra-argument support
    assert not isinstance(plain, optax.GradientTransformationExtraArgs)
    params = {"w": np.arange(4, dtype=np.float32)}
    grads = {"w": np.ones(4, np.float32)}
    update = make_update(plain, cfg)
    with_norm = update(params, plain.init(params), params, grads, optax.tree.norm(grads))
    without = update(params, plain.init(params), params, grads)
    for a, b in zip(jax.tree.leaves(with_norm), jax.tree.leaves(without), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(with_norm[0]["w"]), np.arange(4) - 0.1, rtol=1e-6)
