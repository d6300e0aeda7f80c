"""Blocked (flash-style) attention in plain JAX, the `blocked` backend for XLA:CPU.

The reference path (`xla_attention`) materialises the (B, H, Sq, Sk) logits, probabilities and their
gradients: at the small preset's shape that is 82 MB per array, far larger than the CPU's caches, so the
Q K^T product, the softmax and the backward's elementwise work all stream through main memory
(`benchmarks/attention_cpu.py` measures it). This module computes the same function one (batch row, head)
and one tile of `block_q` queries at a time (FlashAttention, Dao et al. 2022, with a full softmax row per
tile):

    logits = q_tile k^T + bias          # (bq, Sk): 2.6 MB at the small preset, about the CPU's L2
    out    = softmax(logits) v           # and the row log-sum-exp, kept for the backward

Tiling per head rather than per batch row (all heads of a tile at once, 8x the logits) made attention
14% faster fwd+bwd at the small preset's shape on the 2-core CPU (session 24, docs/performance.md).

The softmax needs a shift c_i >= the row's largest logit so that exp cannot overflow; the row max is
the usual choice, but on XLA:CPU it costs a reduction pass over the (bq, Sk) logits. Any c_i gives the same
probabilities exp(l - c_i) / sum exp(l - c_i) as long as nothing underflows, so a tile whose queries and
keys are short uses the Cauchy-Schwarz bound c_i = |q_i| max_j |k_j| >= q_i . k_j instead, the max taken
over unmasked keys (masked keys only lower a logit, and so cannot change the result, to the bit). With
c_i <= SAFE_LOGIT_BOUND every unmasked logit lies in [-c_i, c_i], so every exp(l - c_i) is at least e^-40
and no term underflows; QK-normalised queries and keys at init give bounds near 8. A tile with a larger
bound takes the row max, as before (a `lax.cond` per tile). On the 2-core CPU this made the forward 15%
faster at the small preset's shape (benchmarks/attention_cpu.py, session 25). A head whose keys are all
masked gets zero logits: the reference path's mean of v, with no gradient to q or k.

The backward (a `jax.custom_vjp`) recomputes each tile's probabilities from the saved log-sum-exp instead
of storing them, as FlashAttention's does:

    dv += p^T do,   ds = p * (do v^T - rowsum(do * out)),   dq = ds k,   dk += ds^T q

Loops are `lax.map` / `lax.scan`, so the compiled size does not grow with sequence length. Results equal
the reference path to float32 rounding (tests/models/test_blocked_attention.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from omnihuman_jax.models.layers import pad_length

DEFAULT_BLOCK_Q = 512  # queries per tile of one head (benchmarks/attention_cpu.py, session 24)
# A tile whose Cauchy-Schwarz bound |q_i| max_j |k_j| stays at or below this shifts its softmax by the
# bound instead of the row max (module docstring): exp then lies in [e^-40, 1], far from f32 underflow.
SAFE_LOGIT_BOUND = 20.0
_NEG = float(jnp.finfo(jnp.float32).min)


def query_block(sq: int, block_q: int = DEFAULT_BLOCK_Q) -> int:
    """Tile size: at most `block_q`, a multiple of 8, splitting `sq` into near-equal tiles."""
    n = -(-sq // block_q)  # tiles
    per_tile = -(-sq // n)
    return -(-per_tile // 8) * 8


def blocked_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, block_q: int = DEFAULT_BLOCK_Q
) -> jax.Array:
    """Softmax attention. q (B, Sq, H, D), k/v (B, Sk, H, D), key_mask (B, Sk) bool -> (B, Sq, H, D)."""
    b, sq, h, d = q.shape
    sk = k.shape[1]
    bq = query_block(sq, block_q)
    scale = d**-0.5

    def to_heads(x):  # (B, S, H, D) -> (B * H, S, D): one map step per (batch row, head)
        x = jnp.swapaxes(x.astype(jnp.float32), 1, 2)
        return x.reshape(b * h, x.shape[2], d)

    if key_mask is None:
        bias = jnp.zeros((b * h, 1, sk), jnp.float32)
    else:
        bias = jnp.where(key_mask, 0.0, _NEG).astype(jnp.float32)  # (B, Sk)
        bias = jnp.broadcast_to(bias[:, None, None, :], (b, h, 1, sk)).reshape(b * h, 1, sk)
    out = _attention(to_heads(q) * scale, to_heads(k), to_heads(v), bias, bq)  # (B * H, Sq, D)
    return jnp.swapaxes(out.reshape(b, h, sq, d), 1, 2).astype(q.dtype)


def _tiles(x: jax.Array, bq: int) -> jax.Array:
    """(S, X) -> (n, bq, X), zero-padding S up to n * bq."""
    x = pad_length(x[None], bq)[0]  # (n * bq, X)
    s, c = x.shape
    return x.reshape(s // bq, bq, c)


def _untile(x: jax.Array, s: int) -> jax.Array:
    """(n, bq, X) -> (S, X), dropping padded rows."""
    n, bq, c = x.shape
    return x.reshape(n * bq, c)[:s]


def _all_masked_as_uniform(q: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A head whose keys are all masked (context parallelism's padded rows) -> q and bias of zeros.

    The reference path gives such a row the mean of v, with no gradient to q or k; zero logits give
    exactly that (the caller zeroes dq), where the f32-minimum bias would lose the log-sum-exp's log(Sk)
    to rounding. Returns (q, bias, any_valid ()).
    """
    any_valid = jnp.any(bias == 0.0)
    return jnp.where(any_valid, q, 0.0), jnp.where(any_valid, bias, 0.0), any_valid


def _head_forward(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, bq: int):
    """One (batch row, head): q (Sq, D), k/v (Sk, D), bias (1, Sk) -> out (Sq, D), lse (Sq, 1)."""
    q, bias, _ = _all_masked_as_uniform(q, bias)
    valid = bias[0] == 0.0  # (Sk,): masked keys take no part in the bound, so they cannot change the result
    k_norm_max = jnp.sqrt(jnp.max(jnp.where(valid, jnp.sum(k * k, axis=-1), 0.0)))  # ()

    def tile(q_tile):  # (bq, D)
        logits = q_tile @ k.T + bias  # (bq, Sk)
        bound = jnp.sqrt(jnp.sum(q_tile * q_tile, axis=-1, keepdims=True)) * k_norm_max  # (bq, 1)
        m = jax.lax.cond(
            jnp.max(bound) <= SAFE_LOGIT_BOUND,
            lambda: bound,  # no row max: one pass over the logits fewer
            lambda: jnp.max(logits, axis=-1, keepdims=True),
        )
        p = jnp.exp(logits - m)
        denom = jnp.sum(p, axis=-1, keepdims=True)
        return (p @ v) / denom, m + jnp.log(denom)

    out, lse = jax.lax.map(tile, _tiles(q, bq))  # (n, bq, D), (n, bq, 1)
    return _untile(out, q.shape[0]), _untile(lse, q.shape[0])


def _head_backward(q, k, v, bias, out, lse, do, bq: int):
    """Gradients of one (batch row, head) (shapes as `_head_forward`) -> dq, dk, dv."""
    q, bias, any_valid = _all_masked_as_uniform(q, bias)
    delta = jnp.sum(do * out, axis=-1, keepdims=True)  # (Sq, 1)

    def tile(carry, xs):
        dk, dv = carry
        q_tile, do_tile, lse_tile, delta_tile = xs  # (bq, D), (bq, D), (bq, 1), (bq, 1)
        p = jnp.exp(q_tile @ k.T + bias - lse_tile)  # (bq, Sk)
        dv = dv + p.T @ do_tile
        ds = p * (do_tile @ v.T - delta_tile)
        dk = dk + ds.T @ q_tile
        return (dk, dv), ds @ k

    xs = tuple(_tiles(x, bq) for x in (q, do, lse, delta))
    (dk, dv), dq = jax.lax.scan(tile, (jnp.zeros_like(k), jnp.zeros_like(v)), xs)
    return jnp.where(any_valid, _untile(dq, q.shape[0]), 0.0), dk, dv  # dk: q is zero when none is valid


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, bias, bq: int):
    """q (BH, Sq, D) pre-scaled, k/v (BH, Sk, D), bias (BH, 1, Sk) -> (BH, Sq, D)."""
    return _attention_fwd(q, k, v, bias, bq)[0]


def _attention_fwd(q, k, v, bias, bq: int):
    out, lse = jax.lax.map(lambda head: _head_forward(*head, bq), (q, k, v, bias))
    return out, (q, k, v, bias, out, lse)


def _attention_bwd(bq: int, residuals, do):
    q, k, v, bias, out, lse = residuals
    dq, dk, dv = jax.lax.map(lambda head: _head_backward(*head, bq), (q, k, v, bias, out, lse, do))
    return dq, dk, dv, jnp.zeros_like(bias)


_attention.defvjp(_attention_fwd, _attention_bwd)
