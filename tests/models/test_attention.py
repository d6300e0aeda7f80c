"""Attention backends against the reference path and a numpy oracle, with the model's key masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnihuman_jax.models import attention as attn


def _qkv(b=2, s=40, h=2, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(b, s, h, d)), jnp.float32) for _ in range(3))


def _model_mask(b=2, n_video=20, n_ref=8, n_text=12) -> np.ndarray:
    """Key mask as the DiT builds it: video, then reference (dropped in sample 1), then padded text."""
    mask = np.ones((b, n_video + n_ref + n_text), bool)
    mask[1, n_video : n_video + n_ref] = False  # dropped reference tokens
    mask[0, -3:] = False  # text padding
    mask[1, -7:] = False
    return mask


def numpy_attention(q, k, v, mask) -> np.ndarray:
    """Oracle: softmax over valid keys only, in float64."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    out = np.zeros_like(q)
    for b in range(q.shape[0]):
        keys = np.flatnonzero(mask[b])
        for h in range(q.shape[2]):
            logits = q[b, :, h] @ k[b, keys, h].T / np.sqrt(q.shape[-1])  # (Sq, Sk_valid)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            out[b, :, h] = (p / p.sum(-1, keepdims=True)) @ v[b, keys, h]
    return out


def _assert_close(got, want, tol, what):
    err = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))
    assert err < tol, f"{what}: max abs error {err:.3g} >= {tol}"


def test_xla_attention_vs_reference():
    q, k, v = _qkv()
    mask = _model_mask()
    got = attn.local_attention(q, k, v, jnp.asarray(mask), "xla")
    _assert_close(got, numpy_attention(q, k, v, mask), 1e-5, "xla vs numpy oracle")


@pytest.mark.parametrize("backend", ["cudnn", "splash"])
def test_accelerator_backend_vs_reference(backend):
    reason = attn.backend_unavailable_reason(backend)
    if reason:
        pytest.skip(reason)
    dtype = jnp.bfloat16 if backend == "cudnn" else jnp.float32
    q, k, v = (x.astype(dtype) for x in _qkv(d=64))
    mask = jnp.asarray(_model_mask())
    got = attn.local_attention(q, k, v, mask, backend).astype(jnp.float32)
    want = attn.local_attention(q, k, v, mask, "xla").astype(jnp.float32)
    _assert_close(got, want, 2e-2 if dtype == jnp.bfloat16 else 1e-5, f"{backend} vs xla")
    grad = lambda b: jax.grad(lambda q: attn.local_attention(q, k, v, mask, b).astype(jnp.float32).sum())(q)
    _assert_close(grad(backend), grad("xla"), 5e-2 if dtype == jnp.bfloat16 else 1e-4, "grad")


def test_splash_kernel_in_pallas_interpreter_vs_reference():
    """The splash code path (padding to its 128 tile, key mask as segment ids) runs anywhere interpreted."""
    q, k, v = _qkv(s=40, d=64)
    mask = _model_mask()
    got = attn.splash_attention(q, k, v, jnp.asarray(mask), interpret=True)
    assert got.shape == q.shape
    _assert_close(got, numpy_attention(q, k, v, mask), 1e-4, "splash (interpreted) vs numpy oracle")


def test_masked_keys_have_no_effect():
    q, k, v = _qkv()
    mask = _model_mask()
    noise = np.where(mask[:, :, None, None], 0.0, 100.0).astype(np.float32)
    a = attn.local_attention(q, k, v, jnp.asarray(mask), "xla")
    b = attn.local_attention(q, k + noise, v - noise, jnp.asarray(mask), "xla")
    _assert_close(a, b, 1e-6, "changing masked keys/values")


def test_padded_sequence_with_masked_keys_equals_unpadded():
    q, k, v = _qkv(s=37)
    mask = jnp.asarray(_model_mask(n_video=17))
    want = attn.local_attention(q, k, v, mask, "xla")
    qp, kp, vp = (attn.pad_length(x, 16) for x in (q, k, v))
    mp = attn.pad_length(mask, 16, value=False)
    assert qp.shape[1] == 48
    got = attn.local_attention(qp, kp, vp, mp, "xla")[:, :37]
    _assert_close(got, want, 1e-6, "padded vs unpadded")


def test_auto_backend_is_blocked_on_cpu_and_unknown_names_fail():
    if jax.default_backend() != "cpu":
        pytest.skip("checks the CPU choice")
    assert attn.resolve_backend("auto", jnp.bfloat16) == "blocked"
    assert attn.resolve_backend("xla", jnp.float32) == "xla"
    assert attn.backend_unavailable_reason("cudnn") is not None
    with pytest.raises(ValueError, match="model.attention='flash'"):
        attn.resolve_backend("flash", jnp.float32)
