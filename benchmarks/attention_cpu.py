"""Where the CPU train step's time goes: one attention (fwd+bwd) at the small preset's shape vs one dense.

  PYTHONPATH=. taskset -c 0,1 python benchmarks/attention_cpu.py

Prints achieved GFLOP/s (fwd+bwd, and forward alone) of our reference `xla` attention, of the `blocked`
backend that `auto` picks on CPU (`omnihuman_jax.models.blocked_attention`, also with other query tiles), of
jax.nn.dot_product_attention, and of a dense layer of the same block, so the gap between attention and
matmul throughput is measured side by side in one run; then the forward's parts alone (the Q K^T
product, which contracts over only the 64-wide head dim, and the softmax), on the whole sequence and on
one 128-query tile, to show what tiling buys on XLA:CPU.
"""

import os
import time

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
from omnihuman_jax import xla_env  # noqa: E402

xla_env.apply(os.environ)  # the XLA:CPU flags launch.train adds, so the kernels timed are the ones it runs
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from omnihuman_jax.models.attention import dot_product_attention  # noqa: E402
from omnihuman_jax.models.blocked_attention import DEFAULT_BLOCK_Q, blocked_attention  # noqa: E402

B, S, H, D = 1, 1600, 8, 64
k0 = jax.random.key(0)
q, k, v = (jax.random.normal(jax.random.fold_in(k0, i), (B, S, H, D)) for i in range(3))
mask = jnp.ones((B, S), bool)
# Losses weight the output by a random tensor: with a plain .sum() the cotangent is all ones and XLA
# folds backward matmuls against it into reductions, which overstates the achieved FLOP/s. Timings take
# value_and_grad, so the forward's last product stays live (grad alone lets XLA drop it).
w_out = jax.random.normal(jax.random.fold_in(k0, 3), (B, S, H, D))
w_dense = jax.random.normal(jax.random.fold_in(k0, 4), (1600, 1536))


def f_ours(q, k, v):
    return (w_out * dot_product_attention(q, k, v, mask, "xla")).sum()


def f_blocked(q, k, v):
    return (w_out * dot_product_attention(q, k, v, mask, "blocked")).sum()


def f_blocked_tiles(block_q: int):
    return lambda q, k, v: (w_out * blocked_attention(q, k, v, mask, block_q)).sum()


def f_jax(q, k, v):
    out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :], implementation="xla")
    return (w_out * out).sum()


def mm(x, w):
    return (w_dense * (x @ w)).sum()


def best_time(f, *args, repeats: int = 3) -> float:
    """Best seconds per call of jit(f) over `repeats` calls, compile excluded."""
    g = jax.jit(f)
    jax.block_until_ready(g(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(g(*args))
        best = min(best, time.perf_counter() - t)
    return best


fwd_flops = 4 * B * H * S * S * D
tile_sweep = [(f"ours blocked, tiles of {n} queries", f_blocked_tiles(n)) for n in (128, 256, 1600)]
kernels = [("ours xla", f_ours), (f"ours blocked (default tiles of {DEFAULT_BLOCK_Q})", f_blocked)]
for name, f in kernels + tile_sweep + [("jax.nn xla", f_jax)]:
    dt = best_time(jax.value_and_grad(f, argnums=(0, 1, 2)), q, k, v)
    dt_fwd = best_time(f, q, k, v)
    print(
        f"{name}: fwd+bwd {dt * 1e3:.1f} ms, {3 * fwd_flops / dt / 1e9:.1f} GFLOP/s; "
        f"fwd {dt_fwd * 1e3:.1f} ms, {fwd_flops / dt_fwd / 1e9:.1f} GFLOP/s"
    )
x = jax.random.normal(k0, (1600, 512))
w = jax.random.normal(k0, (512, 1536))
dt = best_time(jax.value_and_grad(mm, argnums=(0, 1)), x, w, repeats=5)
print(f"dense 1600x512x1536 fwd+bwd {dt * 1e3:.1f} ms, {3 * 2 * 1600 * 512 * 1536 / dt / 1e9:.1f} GFLOP/s")


qh, kh = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)  # (B, H, S, D)
for what, rows in (("whole sequence", S), ("one 128-query tile", 128)):
    qt = qh[:, :, :rows]
    logits = jnp.einsum("bhqd,bhkd->bhqk", qt, kh)
    dt = best_time(lambda a, b: jnp.einsum("bhqd,bhkd->bhqk", a, b), qt, kh, repeats=5)
    print(f"Q K^T alone, {what} (fwd) {dt * 1e3:.2f} ms, {2 * B * H * rows * S * D / dt / 1e9:.1f} GFLOP/s")
    dt = best_time(lambda x: jax.nn.softmax(x, axis=-1), logits, repeats=5)
    print(f"softmax alone, {what} (fwd) {dt * 1e3:.2f} ms, {dt / logits.size * 1e9:.2f} ns per logit")
