"""3D rotary position embeddings over (t, h, w), with the OmniHuman reference rule.

HunyuanVideo splits the head dimension into three bands (t, h, w), each a 1D RoPE with theta 256 over
interleaved channel pairs. OmniHuman (section 3.2) packs the reference-image tokens into the same sequence
and zeroes the temporal component of their RoPE, leaving h and w unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def rope_frequencies(dim: int, positions: jax.Array, theta: float) -> jax.Array:
    """Angles (S, dim // 2) for one axis band."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))  # (dim // 2,)
    return positions.astype(jnp.float32)[:, None] * inv_freq[None, :]


def grid_positions(t: int, h: int, w: int) -> jax.Array:
    """(t * h * w, 3) integer positions in t-major order, matching the token flattening."""
    tt, hh, ww = jnp.meshgrid(jnp.arange(t), jnp.arange(h), jnp.arange(w), indexing="ij")
    return jnp.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)], axis=-1)


def video_and_reference_positions(t: int, h: int, w: int, with_reference: bool) -> jax.Array:
    """Positions of the latent stream: T*h*w video tokens, then h*w reference tokens at t = 0."""
    pos = grid_positions(t, h, w)
    if with_reference:
        pos = jnp.concatenate([pos, grid_positions(1, h, w)], axis=0)  # temporal component zeroed
    return pos


def rope_cos_sin(positions: jax.Array, axes_dim: Sequence[int], theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape (S, head_dim // 2), the bands concatenated in (t, h, w) order."""
    angles = [rope_frequencies(d, positions[:, i], theta) for i, d in enumerate(axes_dim)]
    angles = jnp.concatenate(angles, axis=-1)  # (S, head_dim // 2)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate interleaved pairs (x0, x1) of x (B, S, H, D) by angles (S, D // 2)."""
    dtype = x.dtype
    x = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)  # (B, S, H, D/2, 2)
    x0, x1 = x[..., 0], x[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = jnp.stack([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1)
    return out.reshape(*out.shape[:-2], -1).astype(dtype)
