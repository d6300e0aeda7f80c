"""Shared layers with logical axis names: dense, norms, timestep and MLP embedders; `pad_length`.

Names and numerics follow diffusers' HunyuanVideo building blocks (`Timesteps`, `TimestepEmbedding`,
`PixArtAlphaTextProjection`, `RMSNorm`, non-affine `LayerNorm` with eps 1e-6), so public weights map
one to one. Every parameter carries logical axis names (see docs/design.md, Sharding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnihuman_jax.models.matmul import dense_dot_general

Dtype = jnp.dtype

default_kernel_init = nn.initializers.xavier_uniform()


def dense(
    features: int,
    axes: tuple[str, str],
    *,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    use_bias: bool = True,
    zero_init: bool = False,
    name: str | None = None,
) -> nn.Dense:
    """A Dense layer whose kernel is named `axes` = (in, out) and whose bias is named (out,).

    Its matmul is `models.matmul.dense_dot_general`: the same product, with a backward whose weight-gradient
    product puts the narrower operand first.
    """
    kernel_init = nn.initializers.zeros_init() if zero_init else default_kernel_init
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
        dot_general=dense_dot_general,  # keeps XLA:CPU from re-evaluating gradients column by column
        name=name,
    )


class RMSNorm(nn.Module):
    """RMSNorm over the last axis with a learned scale, computed in float32 (QK norm)."""

    eps: float = 1e-6
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * scale.astype(jnp.float32)).astype(x.dtype)


def layer_norm(affine: bool = False, name: str | None = None, dtype: Dtype = jnp.float32) -> nn.LayerNorm:
    """LayerNorm with eps 1e-6; non-affine inside adaLN blocks, affine in the text refiner."""
    return nn.LayerNorm(
        epsilon=1e-6,
        use_bias=affine,
        use_scale=affine,
        dtype=dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


def timestep_sinusoid(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal timestep features, cos first (diffusers `Timesteps(flip_sin_to_cos=True, shift=0)`).

    t: (B,) in the network's timestep units (1000 * flow time). Returns (B, dim) float32.
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half
    args = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]  # (B, half)
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class MLPEmbedder(nn.Module):
    """Linear -> SiLU -> Linear (diffusers `TimestepEmbedding` and `PixArtAlphaTextProjection`)."""

    hidden_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = dense(self.hidden_size, ("null", "embed"), name="linear_1", **kw)(x)
        x = nn.silu(x)
        return dense(self.hidden_size, ("embed", "null"), name="linear_2", **kw)(x)


class FeedForward(nn.Module):
    """Two-layer MLP, `proj_in` -> activation -> `proj_out` (diffusers `FeedForward`)."""

    hidden_size: int
    mlp_dim: int
    activation: str = "gelu_tanh"  # gelu_tanh | silu
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(self.mlp_dim, ("embed", "mlp"), name="proj_in", **kw)(x)
        h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
        h = nn.gelu(h, approximate=True) if self.activation == "gelu_tanh" else nn.silu(h)
        return dense(self.hidden_size, ("mlp", "embed"), name="proj_out", **kw)(h)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN modulation: x (B, S, D), shift/scale (B, D)."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


def split_chunks(x: jax.Array, n: int) -> Sequence[jax.Array]:
    return jnp.split(x, n, axis=-1)


def pad_length(x: jax.Array, multiple: int, axis: int = 1, value=0) -> jax.Array:
    """Pads `axis` (default: the sequence) with `value` up to a multiple of `multiple`."""
    pad = -x.shape[axis] % multiple
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)
