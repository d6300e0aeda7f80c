"""The blocked (flash-style) CPU attention against the numpy oracle and the reference path."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnihuman_jax import sharding as shd
from omnihuman_jax.models import attention as attn
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
