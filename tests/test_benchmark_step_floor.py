"""benchmarks/step_floor.py: its jaxpr walk counts every product a step runs; the script prints a floor."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks import step_floor
from omnihuman_jax import flops as flops_lib
from omnihuman_jax import sharding as shd
from omnihuman_jax.batch import sample_model_inputs
from omnihuman_jax.models.matmul import dense_dot_general
from omnihuman_jax.train_state import init_train_state, lr_schedule, make_optimizer
from omnihuman_jax.train_step import jit_train_step, make_train_step
from tests.model_fixtures import build, random_batch, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _counts(fn, *args):
    return step_floor.collect_matmuls(jax.make_jaxpr(fn)(*args).jaxpr)


def test_walk_multiplies_scan_bodies_and_counts_the_cheapest_cond_branch():
    x, w = jnp.ones((8, 16)), jnp.ones((16, 4))

    def fn(x, w):
        _, ys = jax.lax.scan(lambda c, xi: (c, xi @ w), None, jnp.stack([x] * 5))  # 5 products
        big = jax.lax.cond(x[0, 0] > 0, lambda: x @ w @ w.T, lambda: x)  # 2 products or none
        return ys.sum() + big.sum() + (x @ w).sum()  # 1 more

    counts = _counts(fn, x, w)
    assert sum(counts.values()) == 6
    assert sum(step_floor._flops(k) * n for k, n in counts.items()) == 6 * 2 * 8 * 16 * 4


def test_walk_counts_the_dense_layers_custom_vjp_forward_and_backward():
    x, w = jnp.ones((8, 16)), jnp.ones((16, 4))
    counts = _counts(
        jax.grad(lambda x, w: dense_dot_general(x, w, (((1,), (0,)), ((), ()))).sum(), argnums=(0, 1)), x, w
    )
    assert sum(counts.values()) == 3  # y = x w; dx = g w^T; dw = x^T g


def test_walk_of_the_tiny_model_finds_its_analytic_flops_and_the_step_about_three_times_them():
    """The forward's products (blocked attention in scans under shard_map, scanned blocks) add up to
    flops.py's count; the step's (backward, recomputed logits, no gradient for the inputs) to about 3x."""
    cfg = tiny_config()
    model = build(cfg)
    mesh = shd.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    rules = cfg.sharding.logical_axis_rules
    opt = make_optimizer(cfg.optimizer, cfg.total_steps)
    batch = random_batch(cfg, cfg.batch_size)
    inputs = sample_model_inputs(batch)
    state, shardings = init_train_state(model, opt, inputs, 0, mesh, rules)
    step = jit_train_step(
        make_train_step(model, opt, cfg, 1.0, lr_schedule(cfg.optimizer, 10)), shardings, batch, mesh, rules
    )
    t = jnp.full((cfg.batch_size,), 0.5)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.rules_tuple(rules)):
        forward = jax.make_jaxpr(lambda p: model.apply({"params": p}, inputs, t))(state.params).jaxpr
        step_jaxpr = step.jitted.trace(state, shd.shard_batch(batch, mesh)).jaxpr.jaxpr
    executed = {
        name: sum(step_floor._flops(k) * n for k, n in step_floor.collect_matmuls(j).items())
        for name, j in (("forward", forward), ("step", step_jaxpr))
    }
    analytic = cfg.batch_size * flops_lib.forward_flops_per_sample(cfg.model, cfg.shape)
    assert abs(executed["forward"] / analytic - 1) < 0.01, (executed, analytic)
    assert 2.5 < executed["step"] / executed["forward"] < 3.5, executed


def test_script_prints_the_floor_and_its_mfu_bound_on_the_tiny_preset():
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.step_floor",
            "--preset=tiny",
            "--threads=1",
            "--min_time=0.01",
            "--rounds=2",
        ]
        + ["--skip_torch"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    floor = re.search(r"floor, products \+ update: ([\d.]+) s/step, MFU at most ([\d.]+)%", run.stdout)
    assert floor and float(floor.group(1)) > 0 and 0 < float(floor.group(2)) < 100, run.stdout
    update_line = r"update alone \(gradient norm, clipping, AdamW, EMA\): [\d.]+ s"
    assert re.search(update_line, run.stdout), run.stdout
