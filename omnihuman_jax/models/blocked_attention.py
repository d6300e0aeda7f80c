"""Blocked (flash-style) attention in plain JAX, the `blocked` backend for XLA:CPU.

The reference path (`xla_attention`) materialises the (B, H, Sq, Sk) logits, probabilities and their
gradients: at the small preset's shape that is 82 MB per array, far larger than the CPU's caches, so the
Q K^T product, the softmax and the backward's elementwise work all stream through main memory
(`benchmarks/attention_cpu.py` measures it). This module computes the same function one batch row and one
tile of `block_q` queries at a time (FlashAttention, Dao et al. 2022, with a full softmax row per tile):

    logits = q_tile k^T + bias          # (H, bq, Sk), small enough to stay in cache
    out    = softmax(logits) v           # and the row log-sum-exp, kept for the backward

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

DEFAULT_BLOCK_Q = 128  # queries per tile: fastest on the 2-core CPU (benchmarks/attention_cpu.py)
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
    b, sq, _, d = q.shape
    bq = query_block(sq, block_q)
    scale = d**-0.5
    to_heads = lambda x: jnp.swapaxes(x.astype(jnp.float32), 1, 2)  # (B, S, H, D) -> (B, H, S, D)
    if key_mask is None:
        bias = jnp.zeros((b, 1, 1, k.shape[1]), jnp.float32)
    else:
        bias = jnp.where(key_mask, 0.0, _NEG).astype(jnp.float32)[:, None, None, :]  # (B, 1, 1, Sk)
    out = _attention(to_heads(q) * scale, to_heads(k), to_heads(v), bias, bq)  # (B, H, Sq, D)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)


def _tiles(x: jax.Array, bq: int) -> jax.Array:
    """(H, S, X) -> (n, H, bq, X), zero-padding S up to n * bq."""
    x = pad_length(x, bq)  # (H, n * bq, X)
    h, s, c = x.shape
    return x.reshape(h, s // bq, bq, c).transpose(1, 0, 2, 3)


def _untile(x: jax.Array, s: int) -> jax.Array:
    """(n, H, bq, X) -> (H, S, X), dropping padded rows."""
    n, h, bq, c = x.shape
    return x.transpose(1, 0, 2, 3).reshape(h, n * bq, c)[:, :s]


def _row_forward(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, bq: int):
    """One batch row: q (H, Sq, D), k/v (H, Sk, D), bias (1, 1, Sk) -> out (H, Sq, D), lse (H, Sq, 1)."""

    def tile(q_tile):  # (H, bq, D)
        logits = jnp.einsum("hqd,hkd->hqk", q_tile, k) + bias  # (H, bq, Sk)
        m = jnp.max(logits, axis=-1, keepdims=True)
        p = jnp.exp(logits - m)
        denom = jnp.sum(p, axis=-1, keepdims=True)
        return jnp.einsum("hqk,hkd->hqd", p, v) / denom, m + jnp.log(denom)

    out, lse = jax.lax.map(tile, _tiles(q, bq))  # (n, H, bq, D), (n, H, bq, 1)
    return _untile(out, q.shape[1]), _untile(lse, q.shape[1])


def _row_backward(q, k, v, bias, out, lse, do, bq: int):
    """Gradients of one batch row (shapes as `_row_forward`) -> dq, dk, dv."""
    delta = jnp.sum(do * out, axis=-1, keepdims=True)  # (H, Sq, 1)

    def tile(carry, xs):
        dk, dv = carry
        q_tile, do_tile, lse_tile, delta_tile = xs  # (H, bq, D), (H, bq, D), (H, bq, 1), (H, bq, 1)
        p = jnp.exp(jnp.einsum("hqd,hkd->hqk", q_tile, k) + bias - lse_tile)  # (H, bq, Sk)
        dv = dv + jnp.einsum("hqk,hqd->hkd", p, do_tile)
        ds = p * (jnp.einsum("hqd,hkd->hqk", do_tile, v) - delta_tile)
        dk = dk + jnp.einsum("hqk,hqd->hkd", ds, q_tile)
        return (dk, dv), jnp.einsum("hqk,hkd->hqd", ds, k)

    xs = tuple(_tiles(x, bq) for x in (q, do, lse, delta))
    (dk, dv), dq = jax.lax.scan(tile, (jnp.zeros_like(k), jnp.zeros_like(v)), xs)
    return _untile(dq, q.shape[1]), dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, bias, bq: int):
    """q (B, H, Sq, D) pre-scaled, k/v (B, H, Sk, D), bias (B, 1, 1, Sk) -> (B, H, Sq, D)."""
    return _attention_fwd(q, k, v, bias, bq)[0]


def _attention_fwd(q, k, v, bias, bq: int):
    out, lse = jax.lax.map(lambda row: _row_forward(*row, bq), (q, k, v, bias))
    return out, (q, k, v, bias, out, lse)


def _attention_bwd(bq: int, residuals, do):
    q, k, v, bias, out, lse = residuals
    dq, dk, dv = jax.lax.map(lambda row: _row_backward(*row, bq), (q, k, v, bias, out, lse, do))
    return dq, dk, dv, jnp.zeros_like(bias)


_attention.defvjp(_attention_fwd, _attention_bwd)
