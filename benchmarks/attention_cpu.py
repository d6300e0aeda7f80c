"""Where the CPU train step's time goes: one attention (fwd+bwd) at the small preset's shape vs one dense.

  PYTHONPATH=. taskset -c 0,1 python benchmarks/attention_cpu.py

Prints achieved GFLOP/s of our XLA attention, of jax.nn.dot_product_attention, and of a dense layer of the
same block, so the gap between attention and matmul throughput is measured side by side in one run; then
the forward's parts alone (the Q K^T product, which contracts over only the 64-wide head dim, and the
softmax) to show which of them a blocked attention could and could not speed up on XLA:CPU.
"""

import os
import time

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
import jax
import jax.numpy as jnp

from omnihuman_jax.models.attention import dot_product_attention

B, S, H, D = 1, 1600, 8, 64
k0 = jax.random.key(0)
q, k, v = (jax.random.normal(jax.random.fold_in(k0, i), (B, S, H, D)) for i in range(3))
mask = jnp.ones((B, S), bool)


def f_ours(q, k, v):
    return dot_product_attention(q, k, v, mask, "xla").sum()


def f_jax(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :], implementation="xla").sum()


def mm(x, w):
    return (x @ w).sum()


for name, f in [("ours", f_ours), ("jax.nn", f_jax)]:
    g = jax.jit(jax.grad(f, argnums=(0, 1, 2)))
    jax.block_until_ready(g(q, k, v))
    t = time.perf_counter()
    for _ in range(3):
        jax.block_until_ready(g(q, k, v))
    dt = (time.perf_counter() - t) / 3
    flops = 3 * 4 * B * H * S * S * D
    print(f"{name}: fwd+bwd {dt * 1e3:.1f} ms, {flops / dt / 1e9:.1f} GFLOP/s")
x = jax.random.normal(k0, (1600, 512))
w = jax.random.normal(k0, (512, 1536))
g = jax.jit(jax.grad(mm, argnums=(0, 1)))
jax.block_until_ready(g(x, w))
t = time.perf_counter()
for _ in range(5):
    jax.block_until_ready(g(x, w))
dt = (time.perf_counter() - t) / 5
print(f"dense 1600x512x1536 fwd+bwd {dt * 1e3:.1f} ms, {3 * 2 * 1600 * 512 * 1536 / dt / 1e9:.1f} GFLOP/s")


def time_fwd(f, *args, repeats: int = 3) -> float:
    g = jax.jit(f)
    jax.block_until_ready(g(*args))
    t = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(g(*args))
    return (time.perf_counter() - t) / repeats


qh, kh = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)  # (B, H, S, D)
logits = jnp.einsum("bhqd,bhkd->bhqk", qh, kh)
dt = time_fwd(lambda a, b: jnp.einsum("bhqd,bhkd->bhqk", a, b), qh, kh)
print(f"Q K^T alone (fwd) {dt * 1e3:.1f} ms, {2 * B * H * S * S * D / dt / 1e9:.1f} GFLOP/s")
dt = time_fwd(lambda x: jax.nn.softmax(x, axis=-1), logits)
print(f"softmax alone (fwd) {dt * 1e3:.1f} ms, {dt / logits.size * 1e9:.2f} ns per logit")
