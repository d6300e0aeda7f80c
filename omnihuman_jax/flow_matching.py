"""Rectified-flow matching objective (OmniHuman-1 section 3.1; SD3 / HunyuanVideo conventions).

x_t = (1 - t) x_0 + t noise, target velocity = noise - x_0. Timesteps are drawn logit-normal and shifted by
a resolution-dependent shift. The loss is a per-sample MSE over video latent positions that excludes frames
given as motion frames; each sample's loss (and its optional weight) depends on that sample alone.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def shift_timesteps(t: jax.Array, shift: float) -> jax.Array:
    """t' = s t / (1 + (s - 1) t): s > 1 moves mass toward noise, as higher resolutions need."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def resolution_shift(num_tokens: int, base_shift: float, base_tokens: int) -> float:
    """The configured shift, or sqrt(tokens / base_tokens) when a base token count is set."""
    if base_tokens > 0:
        return math.sqrt(num_tokens / base_tokens)
    return base_shift


def sample_timesteps(rng: jax.Array, batch: int, mean: float, std: float, shift: float) -> jax.Array:
    """Logit-normal t in (0, 1), shifted. (B,) float32."""
    u = mean + std * jax.random.normal(rng, (batch,), jnp.float32)
    return shift_timesteps(jax.nn.sigmoid(u), shift)


def interpolate(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    tb = t.reshape((-1,) + (1,) * (x0.ndim - 1))
    return (1.0 - tb) * x0 + tb * noise


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
    return noise - x0


def loss_weight(t: jax.Array, kind: str) -> jax.Array:
    """Per-sample weights: `none`, or SD3's `cosmap` density 2 / (pi (1 - 2t + 2t^2))."""
    if kind == "none":
        return jnp.ones_like(t)
    if kind == "cosmap":
        return 2.0 / (math.pi * (1.0 - 2.0 * t + 2.0 * t * t))
    raise ValueError(f"flow.loss_weighting={kind!r}: choose none or cosmap")


def motion_weights(latents: jax.Array, strength: float, eps: float = 1e-6) -> jax.Array:
    """(B, T, h, w, C) clean latents -> (B, T, h, w) loss weights that favour positions that change over time.

    d = mean over channels of |x_0[t] - x_0[t-1]| (0 at t = 0) and
    w = (1 + strength d / mean(d)) / (1 + strength), the mean taken per sample, so each sample's weights
    average 1 and the loss keeps its scale. A talking face's mouth and a gesturing hand cover a few latent
    positions; with plain MSE the static rest outweighs them. Computed from the target only, so it needs no
    masks or landmarks. strength = 0 gives all-ones.
    """
    x = latents.astype(jnp.float32)
    d = jnp.mean(jnp.abs(x[:, 1:] - x[:, :-1]), axis=-1)  # (B, T-1, h, w)
    d = jnp.concatenate([jnp.zeros_like(d[:, :1]), d], axis=1)  # (B, T, h, w)
    rel = d / (jnp.mean(d, axis=(1, 2, 3), keepdims=True) + eps)
    return jax.lax.stop_gradient((1.0 + strength * rel) / (1.0 + strength))


def region_loss_weights(masks: dict[str, jax.Array], strengths: dict[str, float]) -> jax.Array:
    """(B, T, h, w) landmark masks in [0, 1] (mouth, hands) -> loss weights 1 + sum_k strength_k * mask_k.

    A mouth or a hand covers a few of a frame's latent positions (the data pipeline rasterises its
    landmarks, `data_pipeline.heatmaps`), so with plain MSE the audio-driven lips and the pose-driven hands
    are a small part of the loss. The rest keeps weight 1: identity and body learn as before. A sample with
    no landmarks has all-zero masks and its plain loss.
    """
    total = None
    for key, strength in strengths.items():
        w = strength * jax.lax.stop_gradient(masks[key].astype(jnp.float32))
        total = w if total is None else total + w
    return 1.0 + total


def per_sample_loss(
    pred: jax.Array, target: jax.Array, motion_mask: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Per-sample MSE over non-motion latent frames, optionally weighted per position.

    pred/target (B, T, h, w, C), motion_mask (B, T), weights (B, T, h, w) or None -> (B,).
    """
    keep = (~motion_mask).astype(jnp.float32)  # (B, T)
    sq = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)  # (B, T, h, w)
    if weights is not None:
        sq = sq * weights
    sq = jnp.mean(sq, axis=(2, 3))  # (B, T)
    return jnp.sum(sq * keep, axis=1) / jnp.maximum(jnp.sum(keep, axis=1), 1.0)
