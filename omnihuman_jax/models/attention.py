"""Attention: the joint self-attention kernel and the frame-local audio cross-attention.

The joint attention is the MMDiT design (SD3, HunyuanVideo): video, reference and text tokens attend in
one softmax, with a key mask (B, S) that removes padded text and dropped reference tokens. Backends are
chosen by `config.model.attention`:
- `xla`: the reference einsum-softmax-einsum, every platform;
- `blocked`: the same function one batch row and query tile at a time with a recomputing backward
  (`omnihuman_jax.models.blocked_attention`), so the logits stay in cache: the fast path on XLA:CPU;
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")`, flash attention on NVIDIA GPUs;
- `splash`: Pallas splash attention on TPU (`jax.experimental.pallas.ops.tpu.splash_attention`), the key
  mask expressed as segment ids (query segment 0, key segment 0 when valid, 1 when masked);
- `auto`: splash on TPU, cuDNN on GPU for 16-bit inputs, blocked on CPU, xla otherwise.
Kernels with tile constraints get the sequence padded to a multiple of their block; padded keys are
masked and padded query rows are dropped. With a `context` mesh axis larger than one, the call runs under
`omnihuman_jax.context_parallel` (sequence-sharded queries, all-gathered keys and values); splash and
blocked run there on any mesh, so their loops see only a device's own batch rows and heads.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from omnihuman_jax.models.blocked_attention import blocked_attention
from omnihuman_jax.models.layers import RMSNorm, dense, layer_norm, pad_length

ATTENTION_BACKENDS = ("auto", "xla", "blocked", "cudnn", "splash")
SPLASH_BLOCK = 128  # splash attention's default q / kv tile
QKV_CHECKPOINT_NAMES = ("query_proj", "key_proj", "value_proj")  # saved by remat="save_qkv_proj"


def backend_unavailable_reason(name: str) -> str | None:
    """None when `name` can run on the default platform, else why not (tests skip with this reason)."""
    platform = jax.default_backend()
    if name in ("auto", "xla", "blocked"):
        return None
    if name == "cudnn":
        return None if platform == "gpu" else f"cuDNN attention needs a GPU; the platform is {platform}"
    if name == "splash":
        if platform != "tpu":
            return f"splash attention needs a TPU; the platform is {platform}"
        try:
            from jax.experimental.pallas.ops.tpu import splash_attention  # noqa: F401
        except ImportError as e:
            return f"splash attention does not import: {e}"
        return None
    return f"unknown attention backend {name!r}"


def resolve_backend(name: str, dtype: jnp.dtype) -> str:
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"model.attention={name!r}: choose one of {ATTENTION_BACKENDS}")
    if name != "auto":
        return name
    platform = jax.default_backend()
    if platform == "tpu":
        return "splash"
    if platform == "cpu":
        return "blocked"
    on_gpu_16bit = platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    return "cudnn" if on_gpu_16bit else "xla"


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, backend: str = "xla"
) -> jax.Array:
    """Softmax attention. q (B, Sq, H, D), k/v (B, Sk, H, D), key_mask (B, Sk) bool -> (B, Sq, H, D).

    Runs under shard_map (omnihuman_jax.context_parallel) when the current mesh has a `context` axis of
    size > 1, and always for splash and blocked on a mesh: Mosaic kernels cannot be partitioned
    automatically, and the blocked kernel's loop over batch rows must not run over a sharded axis.
    """
    from omnihuman_jax.context_parallel import (
        context_axis_size,
        context_parallel_attention,
        mesh_is_set,
    )

    if context_axis_size() > 1 or (backend in ("splash", "blocked") and mesh_is_set()):
        return context_parallel_attention(
            q, k, v, key_mask, functools.partial(local_attention, backend=backend)
        )
    return local_attention(q, k, v, key_mask, backend)


def local_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, backend: str = "xla"
) -> jax.Array:
    """The attention kernel on whole (unsharded-in-length) arrays, by backend name."""
    if backend == "xla":
        return xla_attention(q, k, v, key_mask)
    if backend == "blocked":
        return blocked_attention(q, k, v, key_mask)
    if backend == "cudnn":
        return cudnn_attention(q, k, v, key_mask)
    if backend == "splash":
        return splash_attention(q, k, v, key_mask)
    raise ValueError(f"attention backend {backend!r}: choose one of {ATTENTION_BACKENDS[1:]}")


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    """The reference path: f32 logits and softmax, masked keys at the f32 minimum."""
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum(
        "bqhd,bkhd->bhqk", q * jnp.asarray(scale, q.dtype), k, preferred_element_type=jnp.float32
    )
    if key_mask is not None:
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, Sk)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_mask: jax.Array | None,
    *,
    block: int = SPLASH_BLOCK,
    interpret: bool = False,
) -> jax.Array:
    """Pallas splash attention (TPU; `interpret=True` runs the kernel in the Pallas interpreter anywhere).

    The sequence is padded to a multiple of `block`; padded keys join the masked segment.
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, sq, h, d = q.shape
    sk_len = k.shape[1]
    if key_mask is None:
        key_mask = jnp.ones((b, sk_len), bool)
    qp, kp, vp = (pad_length(x, block) for x in (q, k, v))
    kv_seg = pad_length(jnp.where(key_mask, 0, 1).astype(jnp.int32), block, value=1)  # (B, Sk')
    q_seg = jnp.zeros((b, qp.shape[1]), jnp.int32)
    sizes = sk.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = sm.MultiHeadMask([sm.FullMask((qp.shape[1], kp.shape[1])) for _ in range(h)])
    kernel = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
    scale = d**-0.5
    to_heads = lambda x: jnp.swapaxes(x, 1, 2)  # (B, S, H, D) -> (B, H, S, D)

    def one(qb, kb, vb, qs, ks):
        return kernel(qb, kb, vb, segment_ids=sk.SegmentIds(q=qs, kv=ks))

    out = jax.vmap(one)(to_heads(qp * jnp.asarray(scale, q.dtype)), to_heads(kp), to_heads(vp), q_seg, kv_seg)
    return jnp.swapaxes(out, 1, 2)[:, :sq].astype(q.dtype)


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
            split_heads(
                checkpoint_name(dense(self.hidden_size, ("embed", "heads"), name=n, **kw)(x), tag),
                self.num_heads,
            )
            for n, tag in zip(names, QKV_CHECKPOINT_NAMES, strict=True)
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
        # The (B*T, H, HW, Na) logits are small: the reference path serves every backend but Pallas'.
        backend = "xla" if self.backend == "blocked" else self.backend
        out = dot_product_attention(q, k, v, None, backend).reshape(b, n, d)
        return dense(d, ("heads", "embed"), name="to_out", zero_init=True, **kw)(out)
