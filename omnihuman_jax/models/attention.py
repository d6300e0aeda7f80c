"""Attention: the joint self-attention kernel and the frame-local audio cross-attention.

The joint attention is the MMDiT design (SD3, HunyuanVideo): video, reference and text tokens attend in
one softmax, with a key mask that removes padded text and dropped reference tokens. Backends are chosen
by name (`xla` everywhere, `cudnn` flash attention on GPU); `auto` picks cuDNN on GPU for 16-bit inputs.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnihuman_jax.models.layers import RMSNorm, dense, layer_norm

ATTENTION_BACKENDS = ("auto", "xla", "cudnn")


def resolve_backend(name: str, dtype: jnp.dtype) -> str:
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"model.attention={name!r}: choose one of {ATTENTION_BACKENDS}")
    if name != "auto":
        return name
    on_gpu = jax.default_backend() == "gpu"
    return "cudnn" if on_gpu and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, backend: str = "xla"
) -> jax.Array:
    """Softmax attention. q (B, Sq, H, D), k/v (B, Sk, H, D), key_mask (B, Sk) bool -> (B, Sq, H, D)."""
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, Sk)
    if backend == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """(B, S, H*D) -> (B, S, H, D)."""
    return x.reshape(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


class QKVProjection(nn.Module):
    """q, k, v projections with QK RMSNorm; `prefix` selects diffusers' names (`to_` or `add_..._proj`)."""

    hidden_size: int
    num_heads: int
    prefix: str = "to"
    qk_norm: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        names = (
            ("to_q", "to_k", "to_v") if self.prefix == "to" else ("add_q_proj", "add_k_proj", "add_v_proj")
        )
        q, k, v = (
            split_heads(dense(self.hidden_size, ("embed", "heads"), name=n, **kw)(x), self.num_heads)
            for n in names
        )
        if self.qk_norm:
            qn, kn = ("norm_q", "norm_k") if self.prefix == "to" else ("norm_added_q", "norm_added_k")
            q = RMSNorm(name=qn, param_dtype=self.param_dtype)(q)
            k = RMSNorm(name=kn, param_dtype=self.param_dtype)(k)
        return q, k, v


class AudioCrossAttention(nn.Module):
    """Frame-local cross-attention from video tokens to audio tokens (OmniHuman section 3.2).

    Video tokens of latent frame t attend only to that frame's audio tokens. The output projection is
    zero-initialised, so adding the audio pathway leaves a pretrained base unchanged at step 0.
    """

    hidden_size: int
    num_heads: int
    backend: str = "xla"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, video: jax.Array, audio_tokens: jax.Array) -> jax.Array:
        """video (B, T*HW, D), audio_tokens (B, T, Na, D) -> update (B, T*HW, D)."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, n, d = video.shape
        t, na = audio_tokens.shape[1], audio_tokens.shape[2]
        x = layer_norm(name="norm", dtype=self.dtype)(video).reshape(b * t, n // t, d)  # (B*T, HW, D)
        ctx = audio_tokens.reshape(b * t, na, d)  # (B*T, Na, D)
        q = split_heads(dense(d, ("embed", "heads"), name="to_q", **kw)(x), self.num_heads)
        k = split_heads(dense(d, ("embed", "heads"), name="to_k", **kw)(ctx), self.num_heads)
        v = split_heads(dense(d, ("embed", "heads"), name="to_v", **kw)(ctx), self.num_heads)
        q = RMSNorm(name="norm_q", param_dtype=self.param_dtype)(q)
        k = RMSNorm(name="norm_k", param_dtype=self.param_dtype)(k)
        out = dot_product_attention(q, k, v, None, self.backend).reshape(b, n, d)
        return dense(d, ("heads", "embed"), name="to_out", zero_init=True, **kw)(out)
