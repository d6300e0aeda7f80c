"""The matmul floor of the CPU train step: the fastest the step could be on XLA:CPU's own kernels.

  python -m benchmarks.step_floor --preset=small --threads=2

Issues 2 and 7 ask the small preset's CPU step for at least 70% MFU against the measured matmul peak.
This script bounds what any XLA:CPU step of this model can reach. It traces one real train step (the
one `benchmarks/train_step.py` times: forward, backward, AdamW, clipping, EMA), walks its jaxpr (a scan
multiplies its body by its length, a `lax.cond` counts its cheapest branch, a `while` loop, whose trip
count is not static, counts its body once, which can only lower the floor) and collects every
`dot_general` and convolution with its operand shapes. Each distinct product is then run alone with XLA at
those shapes, its inputs hot in cache, and its best time over `--rounds` sweeps kept, less the cost of
calling a trivial jitted function with the same arguments. The optimizer update
(`omnihuman_jax.train_step.make_update`), which reads and writes every parameter, moment and EMA buffer,
is timed alone on donated state, also best of the sweeps.

Floor = sum of the products' times (+ the update): the step's time if softmax, norms, modulation,
activations, transposes and copies cost nothing and every product ran as fast as it does alone. It is
an optimistic bound: the step itself cannot run faster on these kernels. Printed as MFU against a
square matmul peak (2048^3 on CPU) measured in the same run (before each sweep and after the last; the
highest reading is used, as train_step does).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

from benchmarks.train_step import build_our_step, diffusers_step, make_parser, set_thread_env

MATMULS = ("dot_general", "conv_general_dilated")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """This script's options, then train_step's (preset, stage, threads, remat, attention, ...)."""
    parent = make_parser(add_help=False, description=None)
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[parent]
    )
    p.add_argument("--min_time", type=float, default=0.3, help="seconds each product is run for (best kept)")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="sweeps over all products (and peak readings); each product's best over all is kept, so a "
        "slow spell of the host in one sweep does not raise the floor",
    )
    p.add_argument("--top", type=int, default=12, help="how many of the costliest products to list")
    return p.parse_args(argv)


def _sub_jaxprs(eqn):
    """(multiplier, jaxpr) pairs of an equation's sub-computations; cond branches are handled apart."""
    mult = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(item, "jaxpr", item)
            if hasattr(inner, "eqns"):
                yield mult, inner


def collect_matmuls(jaxpr, mult: int = 1, out: collections.Counter | None = None) -> collections.Counter:
    """Counter of matmul equations (keyed by primitive, input avals and params) -> times run per step."""
    out = collections.Counter() if out is None else out
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in MATMULS:
            out[_key(eqn)] += mult
        elif name == "cond":
            branches = [collect_matmuls(b.jaxpr) for b in eqn.params["branches"]]
            cheapest = min(branches, key=lambda c: sum(_flops(k) * n for k, n in c.items()))
            for k, n in cheapest.items():
                out[k] += n * mult
        else:
            for m, inner in _sub_jaxprs(eqn):
                collect_matmuls(inner, mult * m, out)
    return out


def _key(eqn):
    avals = tuple((tuple(v.aval.shape), str(v.aval.dtype)) for v in eqn.invars)
    params = tuple(sorted((k, _hashable(v)) for k, v in eqn.params.items()))
    return eqn.primitive, avals, params, tuple(o.aval.shape for o in eqn.outvars)


class _Unhashable:
    """An unhashable equation parameter, hashed by its repr: the walk's keys must be hashable."""

    def __init__(self, value):
        self.value = value

    def __hash__(self) -> int:
        return hash(repr(self.value))

    def __eq__(self, other) -> bool:
        return isinstance(other, _Unhashable) and repr(self.value) == repr(other.value)


def _hashable(v):
    try:
        hash(v)
        return v
    except TypeError:
        return _Unhashable(v)


def _flops(key) -> int:
    """2 x multiply-adds: output size x contracted size (conv: x kernel window x input features)."""
    prim, avals, params, outs = key
    out_size = 1
    for d in outs[0]:
        out_size *= d
    p = dict(params)
    if prim.name == "dot_general":
        (lhs_contract, _), _ = p["dimension_numbers"]
        k = 1
        for d in lhs_contract:
            k *= avals[0][0][d]
        return 2 * out_size * k
    rhs = avals[1][0]
    spec = p["dimension_numbers"].rhs_spec  # (out features, in features, *window)
    k = rhs[spec[1]]
    for d in spec[2:]:
        k *= rhs[d]
    return 2 * out_size * k


def matmul_timer(key):
    """A function of min_time: best seconds of one run of the product alone, less the call overhead of
    a trivial jitted function with the same arguments."""
    import jax
    import numpy as np

    prim, avals, params, _ = key
    rng = np.random.default_rng(0)
    args = [jax.device_put(rng.standard_normal(s).astype(jax.numpy.dtype(d))) for s, d in avals]
    kw = {k: v.value if isinstance(v, _Unhashable) else v for k, v in params}
    run = jax.jit(lambda *xs: prim.bind(*xs, **kw))
    noop = jax.jit(lambda *xs: xs[0].reshape(-1)[:1])
    return lambda min_time: max(_best(run, args, min_time) - _best(noop, args, 0.05), 0.0)


def _best(fn, args, min_time: float) -> float:
    fn(*args).block_until_ready()
    best, t_end = float("inf"), time.perf_counter() + min_time
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn(*args).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return best


def time_update(built, min_time: float) -> float:
    """Best seconds of the step's update alone on its donated state: the gradient norm (which the step
    takes once, for its NaN guard and the clipping), clipping, AdamW and the EMA."""
    import jax
    import optax

    from omnihuman_jax.train_step import make_update

    state = built["state"]
    apply = make_update(built["optimizer"], built["config"])
    update = jax.jit(lambda p, o, e, g: apply(p, o, e, g, optax.tree.norm(g)), donate_argnums=(0, 1, 2))
    grads = jax.tree.map(lambda p: p * 1e-3, state.params)
    # Copies: the update donates them, and the state is reused by the next sweep.
    held = jax.tree.map(jax.numpy.copy, (state.params, state.opt_state, state.ema_params))
    held = update(*held, grads)
    best, t_end = float("inf"), time.perf_counter() + min_time
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        held = update(*held, grads)
        jax.block_until_ready(held)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_thread_env(args.threads, args.xla_flags, args.platform, args.launcher_flags)
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from omnihuman_jax import sharding as shd
    from omnihuman_jax.metrics import measure_matmul_peak, peak_matmul_size

    built = build_our_step(args)
    with jax.set_mesh(built["mesh"]), nn.logical_axis_rules(shd.rules_tuple(built["rules"])):
        jaxpr = built["step"].jitted.trace(built["state"], built["device_batch"]).jaxpr.jaxpr
    counts = collect_matmuls(jaxpr)
    timers = {key: matmul_timer(key) for key in counts}
    best = dict.fromkeys(counts, float("inf"))
    peaks, update_s = [], float("inf")
    for _ in range(args.rounds):
        peaks.append(measure_matmul_peak(dtype=jnp.dtype(args.dtype), repeats=5))
        for key, timer in timers.items():
            best[key] = min(best[key], timer(args.min_time))
        update_s = min(update_s, time_update(built, 3 * args.min_time))
    peaks.append(measure_matmul_peak(dtype=jnp.dtype(args.dtype), repeats=5))
    rows = [(n * best[key], n, best[key], key) for key, n in counts.items()]
    peak, flops = max(peaks), built["flops"]
    matmul_s = sum(r[0] for r in rows)
    matmul_flops = sum(_flops(k) * n for k, n in counts.items())

    print(
        f"preset={args.preset} stage={args.stage} threads={args.threads}: {len(counts)} distinct products, "
        f"{sum(counts.values())} run per step, {matmul_flops / 1e9:.1f} GFLOP executed (model FLOPs "
        f"{flops / 1e9:.1f} G; the attention backward recomputes its logits)"
    )
    print(
        f"matmul peak ({peak_matmul_size(jax.devices()[0].platform)}^3): {peak / 1e9:.1f} GFLOP/s "
        f"(highest of {len(peaks)} readings, lowest {min(peaks) / 1e9:.1f}; {args.rounds} rounds)"
    )
    print(f"\n{'share':>6} {'count':>5} {'ms each':>8} {'GFLOP/s':>8}  product (input shapes)")
    for total, n, seconds, key in sorted(rows, key=lambda r: r[0], reverse=True)[: args.top]:
        rate = _flops(key) / seconds / 1e9 if seconds else float("inf")
        shapes = " x ".join(str(s) for s, _ in key[1])
        print(f"{total / matmul_s:6.1%} {n:5d} {seconds * 1e3:8.3f} {rate:8.1f}  {key[0].name} {shapes}")
    print(f"\nproducts alone: {matmul_s:.3f} s ({matmul_flops / matmul_s / 1e9:.1f} GFLOP/s executed)")
    print(f"update alone (gradient norm, clipping, AdamW, EMA): {update_s:.3f} s")
    for label, seconds in (("products only", matmul_s), ("products + update", matmul_s + update_s)):
        print(f"floor, {label}: {seconds:.3f} s/step, MFU at most {flops / seconds / peak:.1%}")
    theirs = (
        None
        if args.skip_torch
        else diffusers_step(args, built["config"], built["config"].shape.latent_frames)
    )
    if theirs:
        median = float(np.median(theirs))
        print(f"diffusers, same latent shape: step median {median:.3f} s (best {min(theirs):.3f} s)")
        print(f"ratio floor (products + update) / diffusers: at least {(matmul_s + update_s) / median:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
