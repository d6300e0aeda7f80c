"""The dense layers' matmul (custom VJP) against lax.dot_general, and remat policies that still see it."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnihuman_jax.models import layers
from omnihuman_jax.models.matmul import dense_dot_general
from tests.model_fixtures import build, inputs_from_batch, random_batch, randomize
from tests.models.test_scan_remat import _cfg

PLAIN = (((-1,), (0,)), ((), ()))


def _dims(x):
    return (((x.ndim - 1,), (0,)), ((), ()))


@pytest.mark.parametrize("shape", [(6, 5), (2, 7, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("dout", [3, 8])  # narrower and wider than Din = 5: both orders of the dw product
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)])
def test_dense_matmul_value_and_grads_equal_lax_dot_general(shape, dout, dtype, tol):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), dtype)
    w = jnp.asarray(rng.normal(size=(5, dout)), dtype)
    cot = jnp.asarray(rng.normal(size=(*shape[:-1], dout)), jnp.float32)  # a non-uniform cotangent

    def loss(dot):
        return lambda x, w: jnp.sum(cot * dot(x, w, _dims(x)).astype(jnp.float32))

    got = jax.value_and_grad(loss(dense_dot_general), argnums=(0, 1))(x, w)
    want = jax.value_and_grad(loss(jax.lax.dot_general), argnums=(0, 1))(x, w)
    for name, a, b in zip(("value", "dx", "dw"), jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        err = float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
        scale = max(1.0, float(jnp.max(jnp.abs(b.astype(jnp.float32)))))
        assert err <= tol * scale, f"{name} ({dtype.__name__}, {shape}): max error {err}"


def test_dense_dot_general_defers_to_lax_for_batch_dims_and_precision():
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.normal(size=(2, 4, 5)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32)
    batched = (((2,), (1,)), ((0,), (0,)))
    np.testing.assert_array_equal(dense_dot_general(a, b, batched), jax.lax.dot_general(a, b, batched))
    jaxpr = str(jax.make_jaxpr(lambda x, w: dense_dot_general(x, w, _dims(x), "highest"))(a, b[0]))
    assert "custom_vjp" not in jaxpr, "an explicit precision must reach lax.dot_general unchanged"
    assert "custom_vjp" in str(jax.make_jaxpr(lambda x, w: dense_dot_general(x, w, _dims(x)))(a, b[0]))


def _grad_flops(monkeypatch, plain: bool, remat: str) -> float:
    if plain:
        monkeypatch.setattr(layers, "dense_dot_general", jax.lax.dot_general)
    cfg = _cfg(1)
    inputs = inputs_from_batch(random_batch(cfg, batch_size=2))
    t = jnp.asarray([0.3, 0.8], jnp.float32)
    model = build(cfg, remat=remat)
    params = nn.unbox(randomize(model.init(jax.random.key(0), inputs, t)["params"]))
    loss = lambda p: jnp.mean(model.apply({"params": p}, inputs, t) ** 2)
    flops = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()["flops"]
    monkeypatch.undo()
    return float(flops)


def test_save_dots_keeps_the_dense_outputs_it_kept_before_the_custom_vjp(monkeypatch):
    """Without the name tag save_dots recomputes every dense layer in the backward, as `full` does: at this
    micro model that is 22% more compiled FLOPs. With it, no more than with the plain dot_general (ours
    is 0.5-1% below it at every policy: the weight gradient needs no transpose)."""
    ours = _grad_flops(monkeypatch, plain=False, remat="save_dots")
    plain = _grad_flops(monkeypatch, plain=True, remat="save_dots")
    full = _grad_flops(monkeypatch, plain=False, remat="full")
    assert ours <= 1.001 * plain, (ours, plain)
    assert full > 1.15 * ours, (full, ours)


def test_offload_policy_offloads_dense_outputs_and_dots_off_cpu(monkeypatch):
    """On GPU/TPU `offload` moves dots and tagged dense outputs to host memory, and recomputes the rest."""
    from jax._src import ad_checkpoint
    from jax._src.interpreters import partial_eval as pe

    from omnihuman_jax.models.dit import remat_policy
    from omnihuman_jax.models.matmul import DENSE_CHECKPOINT_NAME

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    policy = remat_policy("offload")
    x = jnp.ones((4, 4))
    dense = policy(ad_checkpoint.name_p, x, name=DENSE_CHECKPOINT_NAME)
    dot = policy(jax.lax.dot_general_p, x, x, dimension_numbers=PLAIN)
    assert isinstance(dense, pe.Offloadable) and dense.dst == "pinned_host", dense
    assert isinstance(dot, pe.Offloadable), dot
    assert policy(ad_checkpoint.name_p, x, name="other") is pe.Recompute
    assert policy(jax.lax.exp_p, x) is pe.Recompute
