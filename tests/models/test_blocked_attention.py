"""The blocked (flash-style) CPU attention against the numpy oracle and the reference path."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnihuman_jax import sharding as shd
from omnihuman_jax.models import attention as attn
from omnihuman_jax.models import blocked_attention as blocked_module
from omnihuman_jax.models.blocked_attention import blocked_attention, query_block
from tests.model_fixtures import tiny_config
from tests.models.test_attention import _assert_close, _model_mask, _qkv, numpy_attention


@pytest.mark.parametrize("block_q", [8, 16, 64])
def test_blocked_attention_vs_reference_with_uneven_tiles(block_q):
    q, k, v = _qkv(s=40, d=16)  # 40 queries: tiles of 8, 14 -> 16 (8 padded rows), or one tile of 40
    mask = _model_mask()
    got = blocked_attention(q, k, v, jnp.asarray(mask), block_q)
    _assert_close(got, numpy_attention(q, k, v, mask), 1e-5, f"blocked (block_q={block_q}) vs numpy oracle")


def test_blocked_attention_gradients_equal_reference_path():
    q, k, v = _qkv(s=40, d=16)
    mask = jnp.asarray(_model_mask())
    w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)  # a non-uniform cotangent

    def loss(backend):
        kernel = (lambda *a: blocked_attention(*a, 16)) if backend == "blocked" else attn.xla_attention
        return lambda q, k, v: jnp.sum(w * kernel(q, k, v, mask))

    got = jax.grad(loss("blocked"), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", got, want, strict=True):
        _assert_close(a, b, 1e-5, f"d{name} blocked vs xla")


def test_blocked_attention_without_mask_and_in_bfloat16():
    q, k, v = _qkv(s=24, d=16)
    got = blocked_attention(q, k, v, None, 8)
    _assert_close(got, numpy_attention(q, k, v, np.ones((2, 24), bool)), 1e-5, "no key mask")
    low = blocked_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), None, 8)
    assert low.dtype == jnp.bfloat16
    _assert_close(low.astype(jnp.float32), got, 3e-2, "bfloat16 inputs")


@pytest.mark.parametrize("safe_bound", [float("inf"), float("-inf")], ids=["bound_shift", "row_max"])
def test_each_softmax_shift_equals_the_oracle_in_value_and_gradient(monkeypatch, safe_bound):
    """inf: every tile shifts by its Cauchy-Schwarz bound; -inf: every tile by its row max."""
    monkeypatch.setattr(blocked_module, "SAFE_LOGIT_BOUND", safe_bound)
    q, k, v = _qkv(s=40, d=16)
    mask = _model_mask()
    got = blocked_attention(q, k, v, jnp.asarray(mask), 16)
    _assert_close(got, numpy_attention(q, k, v, mask), 1e-5, f"forward, SAFE_LOGIT_BOUND={safe_bound}")
    w = jnp.asarray(np.random.default_rng(3).normal(size=q.shape), jnp.float32)
    grads = jax.grad(lambda *a: jnp.sum(w * blocked_attention(*a, jnp.asarray(mask), 16)), (0, 1, 2))(q, k, v)
    want = jax.grad(lambda *a: jnp.sum(w * attn.xla_attention(*a, jnp.asarray(mask))), (0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", grads, want, strict=True):
        _assert_close(a, b, 1e-5, f"d{name}, SAFE_LOGIT_BOUND={safe_bound}")


def test_masked_keys_leave_the_output_unchanged_to_the_bit():
    """The softmax shift's bound ignores masked keys, so even very long ones change nothing."""
    q, k, v = _qkv(s=40, d=16)
    mask = _model_mask()
    far = np.where(mask[:, :, None, None], 1.0, 100.0).astype(np.float32)  # masked keys 100x longer
    a = blocked_attention(q, k, v, jnp.asarray(mask), 16)
    b = blocked_attention(q, k * far, v * far, jnp.asarray(mask), 16)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_row_with_every_key_masked_stays_finite_and_equals_the_reference_path():
    """Context parallelism pads the batch with rows whose keys are all masked."""
    q, k, v = _qkv(s=24, d=16)
    mask = np.ones((2, 24), bool)
    mask[1] = False
    w = jnp.asarray(np.random.default_rng(5).normal(size=q.shape), jnp.float32)

    def loss(kernel):
        return lambda *a: jnp.sum(w * kernel(*a, jnp.asarray(mask)))

    got = blocked_attention(q, k, v, jnp.asarray(mask), 8)
    assert bool(jnp.all(jnp.isfinite(got))), "a fully masked row gave non-finite outputs"
    _assert_close(got, attn.xla_attention(q, k, v, jnp.asarray(mask)), 1e-5, "fully masked row vs xla")
    grads = jax.grad(loss(lambda *a: blocked_attention(*a, 8)), (0, 1, 2))(q, k, v)
    want = jax.grad(loss(attn.xla_attention), (0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", grads, want, strict=True):
        _assert_close(a, b, 1e-5, f"d{name} with a fully masked row")


def test_long_queries_and_keys_fall_back_to_the_row_max_and_stay_exact():
    """Logits near +-200: a shift by the bound (about 200) would underflow every exp of the opposed rows."""
    rng = np.random.default_rng(4)
    b, s, h, d = 1, 24, 2, 16
    u = rng.normal(size=(d,)).astype(np.float32)
    u *= 20.0 / np.linalg.norm(u)  # |u| = 20, so |q_i| |k_j| / sqrt(d) = 100 before the noise
    k = np.broadcast_to(u, (b, s, h, d)) + 0.1 * rng.normal(size=(b, s, h, d)).astype(np.float32)
    signs = np.where(np.arange(s) % 2 == 0, 1.0, -1.0).astype(np.float32)[None, :, None, None]
    q = 2.0 * signs * np.broadcast_to(u, (b, s, h, d))  # even rows aligned with every key, odd rows opposed
    v = rng.normal(size=(b, s, h, d)).astype(np.float32)
    mask = np.ones((b, s), bool)
    got = blocked_attention(*(jnp.asarray(x) for x in (q, k, v)), jnp.asarray(mask), 8)
    assert bool(jnp.all(jnp.isfinite(got))), "large logits gave non-finite outputs"
    _assert_close(got, numpy_attention(q, k, v, mask), 1e-4, "large logits (row-max fallback)")


def test_query_block_splits_into_near_equal_tiles_of_eights():
    assert query_block(1600) == 400  # 4 tiles of one head at the small preset's length
    assert query_block(1600, 128) == 128  # 13 tiles, the last one padded by 64 rows
    assert query_block(129, 128) == 72  # two tiles, not 128 + 1
    assert query_block(100) == 104
    assert all(query_block(s, 128) % 8 == 0 and query_block(s, 128) <= 128 for s in range(1, 600))


def test_blocked_on_a_mesh_runs_per_device_and_equals_one_device_with_uneven_batch():
    """On a mesh the kernel runs under shard_map; a batch of 3 is padded to the 4 data shards."""
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.normal(size=(3, 37, 2, 16)), jnp.float32) for _ in range(3))
    mask = np.ones((3, 37), bool)
    mask[1, 20:28] = False
    mask = jnp.asarray(mask)
    want = attn.local_attention(q, k, v, mask, "xla")
    want_dq = jax.grad(lambda q: attn.local_attention(q, k, v, mask, "xla").sum())(q)
    cfg = tiny_config()
    mesh = shd.make_mesh(dict(data=4, fsdp=1, context=1, tensor=2))
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.rules_tuple(cfg.sharding.logical_axis_rules)):
        got = jax.jit(lambda *a: attn.dot_product_attention(*a, "blocked"))(q, k, v, mask)
        dq = jax.jit(jax.grad(lambda q: attn.dot_product_attention(q, k, v, mask, "blocked").sum()))(q)
    _assert_close(got, want, 1e-5, "blocked on a (4 data x 2 tensor) mesh vs one device")
    _assert_close(dq, want_dq, 1e-4, "dq blocked on a mesh vs one device")
