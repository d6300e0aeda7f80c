"""Context parallelism on the 8-device CPU mesh: sequence-sharded runs equal the unsharded run."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from omnihuman_jax import sharding as shd
from omnihuman_jax.context_parallel import context_axis_size
from omnihuman_jax.models import attention as attn
from tests.model_fixtures import build, inputs_from_batch, random_batch, randomize, tiny_config


def _err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_context_parallel_attention_equals_unsharded_for_odd_length():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 37, 2, 16)), jnp.float32) for _ in range(3))
    mask = np.ones((2, 37), bool)
    mask[1, 20:28] = False
    mask[0, -3:] = False
    mask = jnp.asarray(mask)
    want = attn.local_attention(q, k, v, mask, "xla")
    cfg = tiny_config()
    mesh = shd.make_mesh(dict(data=2, fsdp=1, context=4, tensor=1))
    rules = shd.rules_tuple(cfg.sharding.logical_axis_rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        assert context_axis_size() == 4
        f = jax.jit(lambda *a: attn.dot_product_attention(*a, "xla"))
        got = f(q, k, v, mask)
        grads = jax.jit(jax.grad(lambda q: attn.dot_product_attention(q, k, v, mask, "xla").sum()))(q)
    want_grads = jax.grad(lambda q: attn.local_attention(q, k, v, mask, "xla").sum())(q)
    assert _err(got, want) < 1e-5, f"context-parallel attention max error {_err(got, want)}"
    assert _err(grads, want_grads) < 1e-4, f"context-parallel grad max error {_err(grads, want_grads)}"


def _dit_setup():
    # Small enough to compile fast on 8 devices; keeps the audio cross-attention (regroups tokens by frame).
    cfg = tiny_config(
        **{
            "model.attention": "xla",
            "model.hidden_size": 32,
            "model.rope_axes_dim": (4, 6, 6),
            "model.num_refiner_blocks": 0,
            "model.use_pose": False,
            "shape.latent_height": 4,
            "shape.latent_width": 4,
            "shape.text_len": 5,
        }
    )
    model = build(cfg)
    inputs = inputs_from_batch(random_batch(cfg, batch_size=2))
    t = jnp.asarray([0.3, 0.8], jnp.float32)
    params = nn.unbox(randomize(model.init(jax.random.key(0), inputs, t)["params"]))
    loss = lambda p, x: jnp.mean(model.apply({"params": p}, x, t) ** 2)
    return cfg, params, inputs, loss


def _on_context_mesh(cfg, inputs, fn):
    mesh = shd.make_mesh(dict(data=2, fsdp=1, context=4, tensor=1))
    rules = shd.rules_tuple(cfg.sharding.logical_axis_rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        assert context_axis_size() == 4
        sharded = {k: jax.device_put(v, NamedSharding(mesh, P(("data", "fsdp")))) for k, v in inputs.items()}
        return fn(sharded)


def test_dit_forward_with_context_axis_equals_unsharded():
    cfg, params, inputs, loss = _dit_setup()
    model = build(cfg)
    t = jnp.asarray([0.3, 0.8], jnp.float32)
    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x, t))
    want = fwd(params, inputs)
    got = _on_context_mesh(
        cfg, inputs, lambda x: jax.jit(lambda p, x: model.apply({"params": p}, x, t))(params, x)
    )
    tol = 1e-5 * max(1.0, float(jnp.max(jnp.abs(want))))  # f32 sums reordered by the sharding
    assert _err(got, want) < tol, f"velocity max error with context=4: {_err(got, want)} >= {tol}"


@pytest.mark.slow
def test_dit_grad_with_context_axis_equals_unsharded():
    cfg, params, inputs, loss = _dit_setup()
    want = jax.jit(jax.grad(loss))(params, inputs)
    got = _on_context_mesh(cfg, inputs, lambda x: jax.jit(jax.grad(loss))(params, x))
    gerr = max(_err(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True))
    assert gerr < 1e-4, f"grad max error with context=4: {gerr}"


def test_mesh_config_without_context_entry_gets_context_one():
    assert shd.mesh_shape(dict(data=-1, fsdp=1, tensor=1), 8) == (8, 1, 1, 1)
    assert shd.mesh_shape(dict(data=2, fsdp=1, context=4, tensor=1), 8) == (2, 1, 4, 1)
