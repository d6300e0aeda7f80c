"""The flow-matching train step: sharded, jitted, with gradient accumulation, EMA and a NaN guard.

One call is one optimiser update. RNG comes from (seed, step) only, so a resumed run draws exactly the
timesteps and noise an uninterrupted run would. A step whose loss or gradient is non-finite leaves params,
EMA and optimiser state untouched and is counted in the state and in the metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from omnihuman_jax import flow_matching as fm
from omnihuman_jax import sharding as shd
from omnihuman_jax.batch import region_weights
from omnihuman_jax.conditions import INDEX, model_inputs
from omnihuman_jax.train_state import TrainState, lr_multiplier_tree, update_if_finite

Batch = dict[str, jax.Array]


def step_rng(seed: int, step: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), step)


def make_loss_fn(model: nn.Module, config: Any) -> Callable:
    flow = config.flow

    def loss_fn(params, batch: Batch):
        """batch holds the training batch plus its draws `_t` (B,) and `_noise` (B, T, h, w, C), and
        `_motion_noise` (B, T, h, w, C) when flow.motion_noise > 0."""
        latents, t, noise = batch["latents"], batch["_t"], batch["_noise"]
        x_t = fm.interpolate(latents, noise, t)
        # Noise augmentation of the motion frames' channels only; x_t and the target keep the clean latents.
        cond = {**batch, "latents": latents + batch["_motion_noise"]} if "_motion_noise" in batch else batch
        pred = model.apply({"params": params}, model_inputs(cond, x_t), t)
        motion = batch["motion_mask"].astype(bool) & batch["condition_mask"][:, INDEX["motion"], None]
        weights = fm.motion_weights(latents, flow.motion_weight) if flow.motion_weight > 0 else None
        if regions := region_weights(config):
            landmarks = fm.region_loss_weights(batch, regions)  # (B, T, h, w)
            weights = landmarks if weights is None else weights * landmarks
        per_sample = fm.per_sample_loss(pred, fm.velocity_target(latents, noise), motion, weights)  # (B,)
        loss = jnp.mean(per_sample * fm.loss_weight(t, flow.loss_weighting))
        return loss, per_sample

    return loss_fn


def draw_flow_noise(batch: Batch, rng: jax.Array, config: Any, shift: float) -> Batch:
    """Timesteps and noise for the whole global batch, from the step's RNG alone."""
    latents = batch["latents"]
    k_t, k_n = jax.random.split(rng)
    flow = config.flow
    t = fm.sample_timesteps(k_t, latents.shape[0], flow.logit_mean, flow.logit_std, shift)  # (B,)
    noise = jax.random.normal(k_n, latents.shape, jnp.float32)
    draws = {"_t": t, "_noise": noise}
    if flow.motion_noise > 0:
        # Per-sample sigma ~ U(0, motion_noise) on the stacked motion latents (as SVD augments its
        # conditioning frame), so sampling, which feeds back its own decoded-and-re-encoded frames, does
        # not teach the model to trust them exactly. Drawn from a folded key: other draws are unchanged.
        k_s, k_e = jax.random.split(jax.random.fold_in(rng, 2))
        sigma = flow.motion_noise * jax.random.uniform(k_s, (latents.shape[0],), jnp.float32)  # (B,)
        eps = jax.random.normal(k_e, latents.shape, jnp.float32)
        draws["_motion_noise"] = sigma[:, None, None, None, None] * eps
    return {**batch, **draws}


def _microbatches(batch: Batch, k: int) -> Batch:
    """(B, ...) -> (k, B/k, ...) taking every k-th sample, so each microbatch spans all batch shards."""

    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={k}")
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def _grads(loss_fn: Callable, params, batch: Batch, k: int):
    """Mean loss and gradient over the batch, accumulated over k microbatches (same draws as k = 1)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if k == 1:
        (loss, per), grads = grad_fn(params, batch)
        return loss, grads, per

    def body(acc, micro):
        (loss, per), g = grad_fn(params, micro)
        acc = jax.tree.map(lambda a, b: a + b / k, acc, (loss, g))
        return acc, per

    zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), per = jax.lax.scan(body, zero, _microbatches(batch, k))
    return loss, grads, jnp.swapaxes(per, 0, 1).reshape(-1)  # back to batch order


def _bucket_metrics(per_sample: jax.Array, t: jax.Array, n: int) -> dict[str, jax.Array]:
    bucket = jnp.clip((t * n).astype(jnp.int32), 0, n - 1)
    onehot = jax.nn.one_hot(bucket, n)  # (B, n)
    return {"loss_bucket_sum": per_sample @ onehot, "loss_bucket_count": onehot.sum(0)}


def make_update(optimizer: optax.GradientTransformation, config: Any) -> Callable:
    """(params, opt_state, ema_params, grads, grad_norm) -> the three updated: optimizer step, then the EMA.

    grad_norm: `optax.tree.norm(grads)`, which the step already has. It reaches the optimizer (whose
    clipping then skips its own norm, `train_state.clip_by_global_norm`) only if the optimizer takes extra
    arguments; a plain optax transformation computes what it needs itself.
    """
    ema_decay = float(config.optimizer.ema_decay)
    multipliers = config.optimizer.get("lr_multipliers", "")
    takes_extra = isinstance(optimizer, optax.GradientTransformationExtraArgs)

    def update(params, opt_state, ema_params, grads, grad_norm=None):
        extra = {"grad_norm": grad_norm} if takes_extra and grad_norm is not None else {}
        updates, new_opt = optimizer.update(grads, opt_state, params, **extra)
        # Per-parameter rate multipliers scale the final updates (weight decay included), which is a
        # per-parameter learning rate; the optimizer state is the same with or without them.
        mult = lr_multiplier_tree(params, multipliers)
        if mult is not None:
            updates = jax.tree.map(lambda u, m: u * m, updates, mult)
        new_params = optax.apply_updates(params, updates)
        new_ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema_params, new_params)
        return new_params, new_opt, new_ema

    return update


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    config: Any,
    shift: float,
    lr_fn: optax.Schedule,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure (unjitted) step function."""
    loss_fn = make_loss_fn(model, config)
    k = int(config.optimizer.grad_accum_steps)
    update = make_update(optimizer, config)

    def train_step(state: TrainState, batch: Batch):
        batch = draw_flow_noise(batch, step_rng(config.seed, state.step), config, shift)
        loss, grads, per_sample = _grads(loss_fn, state.params, batch, k)
        t = batch["_t"]
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        # A non-finite step leaves params, optimizer state and EMA as they were.
        old = (state.params, state.opt_state, state.ema_params)
        params, opt_state, ema_params = update_if_finite(
            finite, lambda _: update(*old, grads, grad_norm), old
        )
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema_params=ema_params,
            nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
            nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": lr_fn(state.step),
            "nonfinite_total": new_state.nonfinite_total,
            "nonfinite_streak": new_state.nonfinite_streak,
            **_bucket_metrics(per_sample, t, config.flow.num_timestep_buckets),
        }
        return new_state, metrics

    return train_step


def jit_train_step(
    step_fn: Callable, state_shardings: TrainState, batch_example: Batch, mesh: Mesh, rules
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """jax.jit with in/out shardings and a donated state; traced under the mesh and logical rules."""
    batch_sh = {k: shd.batch_sharding(mesh, jnp.ndim(v)) for k, v in batch_example.items()}
    jitted = jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sh),
        out_shardings=(state_shardings, shd.replicated(mesh)),
        donate_argnums=(0,),
    )
    rules_t = shd.rules_tuple(rules)

    def call(state, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules_t):
            return jitted(state, batch)

    call.jitted = jitted
    call.lower = lambda state, batch: _lower(jitted, mesh, rules_t, state, batch)
    return call


def _lower(jitted, mesh, rules_t, state, batch):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules_t):
        return jitted.lower(state, batch)
