"""HunyuanVideo's text token refiner (diffusers `HunyuanVideoTokenRefiner`), in Flax linen.

The text-encoder hidden states are projected to the model width and refined by a few self-attention
blocks conditioned on the timestep and on the masked mean of the text embeddings. Kept weight-compatible
so public HunyuanVideo checkpoints import one to one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnihuman_jax.models.attention import split_heads
from omnihuman_jax.models.layers import FeedForward, MLPEmbedder, dense, layer_norm, timestep_sinusoid


class RefinerBlock(nn.Module):
    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    backend: str = "xla"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, pair_mask: jax.Array) -> jax.Array:
        """x (B, L, D), temb (B, D), pair_mask (B, L, L) bool."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = self.hidden_size
        h = layer_norm(affine=True, name="norm1", dtype=self.dtype)(x)
        q, k, v = (
            split_heads(dense(d, ("embed", "heads"), name=n, **kw)(h), self.num_heads)
            for n in ("to_q", "to_k", "to_v")
        )
        attn = _masked_attention(q, k, v, pair_mask)
        attn = dense(d, ("heads", "embed"), name="to_out", **kw)(attn.reshape(*x.shape[:2], d))
        gates = dense(2 * d, ("embed", "null"), name="norm_out", **kw)(nn.silu(temb))
        gate_msa, gate_mlp = jnp.split(gates, 2, axis=-1)
        x = x + attn * gate_msa[:, None, :]
        ff = FeedForward(d, int(d * self.mlp_ratio), activation="silu", name="ff", **kw)
        return x + ff(layer_norm(affine=True, name="norm2", dtype=self.dtype)(x)) * gate_mlp[:, None, :]


def _masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, pair_mask: jax.Array) -> jax.Array:
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(pair_mask[:, None], logits, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)


def refiner_pair_mask(text_mask: jax.Array) -> jax.Array:
    """(B, L) -> (B, L, L): valid-to-valid pairs, and every query may see key 0 (no empty rows)."""
    pair = text_mask[:, :, None] & text_mask[:, None, :]
    return pair.at[:, :, 0].set(True)


class TextTokenRefiner(nn.Module):
    hidden_size: int
    num_heads: int
    num_layers: int
    mlp_ratio: float = 4.0
    backend: str = "xla"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, text: jax.Array, timestep: jax.Array, text_mask: jax.Array) -> jax.Array:
        """text (B, L, D_text), timestep (B,) in network units, text_mask (B, L) -> (B, L, D)."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        m = text_mask.astype(jnp.float32)[..., None]
        pooled = (text.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)  # (B, D_text)
        temb = MLPEmbedder(self.hidden_size, name="timestep_embedder", **kw)(timestep_sinusoid(timestep))
        temb = temb + MLPEmbedder(self.hidden_size, name="text_embedder", **kw)(pooled.astype(text.dtype))
        x = dense(self.hidden_size, ("null", "embed"), name="proj_in", **kw)(text)
        pair_mask = refiner_pair_mask(text_mask)
        for i in range(self.num_layers):
            x = RefinerBlock(
                self.hidden_size,
                self.num_heads,
                self.mlp_ratio,
                self.backend,
                name=f"refiner_blocks_{i}",
                **kw,
            )(x, temb, pair_mask)
        return x
