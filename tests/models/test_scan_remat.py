"""Layer stacking and remat: every remat policy and the scanned stack give the unrolled model's numbers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnihuman_jax.models.attention import QKV_CHECKPOINT_NAMES
from omnihuman_jax.models.dit import REMAT_POLICIES
from tests.model_fixtures import build, inputs_from_batch, random_batch, randomize, tiny_config

STACKS = ("transformer_blocks", "single_transformer_blocks")


def _cfg(blocks: int = 1):
    """A micro model (width 32, no audio/pose/refiner) so each grad compile stays a few seconds."""
    return tiny_config(
        **{
            "model.num_dual_blocks": blocks,
            "model.num_single_blocks": blocks,
            "model.num_refiner_blocks": 0,
            "model.hidden_size": 32,
            "model.rope_axes_dim": (4, 6, 6),
            "model.attention": "xla",
            "model.use_audio": False,
            "model.use_pose": False,
            "shape.latent_height": 4,
            "shape.latent_width": 4,
            "shape.text_len": 4,
        }
    )


def _setup(blocks: int):
    cfg = _cfg(blocks)
    inputs = inputs_from_batch(random_batch(cfg, batch_size=2))
    t = jnp.asarray([0.3, 0.8], jnp.float32)
    params = nn.unbox(randomize(build(cfg).init(jax.random.key(0), inputs, t)["params"]))
    return cfg, inputs, t, params


@pytest.fixture(scope="module")
def setup():
    return _setup(1)


@pytest.fixture(scope="module")
def setup2():
    return _setup(2)


def _loss_and_grad(model, params, inputs, t):
    loss = lambda p: jnp.mean(model.apply({"params": p}, inputs, t) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)


def restack(params: dict) -> dict:
    """Unrolled params (`transformer_blocks_i`) -> the scanned layout (`transformer_blocks`, layer axis 0)."""
    out = {k: v for k, v in params.items() if not any(k.startswith(f"{s}_") for s in STACKS)}
    for stack in STACKS:
        layers = sorted(
            (k for k in params if k.startswith(f"{stack}_") and k[len(stack) + 1 :].isdigit()),
            key=lambda k: int(k.rsplit("_", 1)[1]),
        )
        if layers:
            out[stack] = jax.tree.map(lambda *xs: jnp.stack(xs), *(params[k] for k in layers))
    return out


def _max_err(a, b) -> float:
    return max(
        float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.fixture(scope="module")
def reference(setup):
    cfg, inputs, t, params = setup
    return _loss_and_grad(build(cfg, remat="none"), params, inputs, t)


# CI runs the two policies that differ most (recompute all, save only tagged q/k/v); the others are slow.
CI_POLICIES = ("full", "save_qkv_proj")


@pytest.mark.parametrize(
    "policy",
    [
        p if p in CI_POLICIES else pytest.param(p, marks=pytest.mark.slow)
        for p in REMAT_POLICIES
        if p != "none"
    ],
)
def test_remat_policy_gives_loss_and_grad_of_no_remat(setup, reference, policy):
    cfg, inputs, t, params = setup
    loss, grads = _loss_and_grad(build(cfg, remat=policy), params, inputs, t)
    ref_loss, ref_grads = reference
    assert abs(float(loss) - float(ref_loss)) < 1e-5 * abs(float(ref_loss)), (float(loss), float(ref_loss))
    err = _max_err(grads, ref_grads)
    assert err < 1e-4, f"remat={policy}: grad max error {err}"


def test_save_qkv_proj_tags_reach_the_traced_model(setup):
    cfg, inputs, t, params = setup
    model = build(cfg, remat="save_qkv_proj")
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: model.apply({"params": p}, inputs, t).sum()))(params))
    for name in QKV_CHECKPOINT_NAMES:
        assert f"name={name}" in jaxpr, f"checkpoint_name {name!r} missing from the traced model"


def test_scanned_stack_equals_unrolled_with_restacked_params(setup2):
    cfg, inputs, t, params = setup2
    stacked = restack(params)
    assert stacked["transformer_blocks"]["norm1"]["kernel"].shape[0] == 2
    fwd = lambda m, p: jax.jit(lambda p: m.apply({"params": p}, inputs, t))(p)
    want = fwd(build(cfg, scan_layers=False), params)
    got = fwd(build(cfg, scan_layers=True), stacked)
    err = float(np.max(np.abs(got - want)))
    assert err < 1e-5 * max(1.0, float(np.max(np.abs(want)))), f"scan vs unrolled max error {err}"


@pytest.mark.slow
def test_scanned_stack_with_remat_grads_equal_unrolled(setup2):
    cfg, inputs, t, params = setup2
    reference = _loss_and_grad(build(cfg, remat="none"), params, inputs, t)
    loss, grads = _loss_and_grad(build(cfg, scan_layers=True, remat="full"), restack(params), inputs, t)
    assert abs(float(loss) - float(reference[0])) < 1e-5 * abs(float(reference[0]))
    err = _max_err(grads, restack(reference[1]))
    assert err < 1e-4, f"scan+remat grad max error {err}"


def test_unknown_remat_policy_fails_with_its_name():
    with pytest.raises(ValueError, match="model.remat='everything'"):
        build(_cfg(), remat="everything").config.validate()
