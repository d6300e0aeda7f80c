"""The VAE's 3D convolution on CPU: one XLA 3D convolution vs. a temporal sum of 2D convolutions, and
for a single frame (the first-frame path) the temporal sum vs. one 2D convolution with a summed kernel.

  PYTHONPATH=. python benchmarks/vae_conv_cpu.py

`omnihuman_jax.models.vae_blocks.Conv3d` picks `conv3d_as_2d` on CPU; this prints fwd+bwd milliseconds of
both at the toy VAE's layer shapes, and their ratio, measured side by side in one run. `CausalConv3d`
uses `conv3d_repeated_frame` for a single input frame (its causal padding repeats it); the second table
compares it with `conv3d_as_2d` on such a padded frame.
"""

import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
import jax
import jax.numpy as jnp

from omnihuman_jax.models.vae_blocks import conv3d_as_2d, conv3d_native, conv3d_repeated_frame

# (B, F, H, W, C_in, C_out): the toy VAE's 64x64 / 32x32 / 16x16 stages on a 5-frame clip (+2 causal pad).
SHAPES = ((2, 7, 66, 66, 8, 8), (2, 7, 34, 34, 16, 16), (2, 5, 18, 18, 32, 32))


def time_grad(conv, x: jax.Array, kernel: jax.Array, repeats: int = 5) -> float:
    g = jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k, (1, 1, 1)) ** 2), argnums=(0, 1)))
    jax.block_until_ready(g(x, kernel))
    t = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(g(x, kernel))
    return (time.perf_counter() - t) / repeats


def main() -> None:
    for b, f, h, w, cin, cout in SHAPES:
        x = jax.random.normal(jax.random.key(0), (b, f, h, w, cin))
        kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, cin, cout))
        native, as_2d = time_grad(conv3d_native, x, kernel), time_grad(conv3d_as_2d, x, kernel)
        print(
            f"x {tuple(x.shape)} -> {cout} ch: native 3D {native * 1e3:.1f} ms, as 2D {as_2d * 1e3:.1f} ms, "
            f"speed-up {native / as_2d:.2f}x (fwd+bwd)"
        )
    for b, _, h, w, cin, cout in SHAPES:  # one frame, causally padded to the kernel's 3 taps
        x = jnp.repeat(jax.random.normal(jax.random.key(0), (b, 1, h, w, cin)), 3, axis=1)
        kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, cin, cout))
        as_2d, summed = time_grad(conv3d_as_2d, x, kernel), time_grad(conv3d_repeated_frame, x, kernel)
        print(
            f"single frame {tuple(x.shape)} -> {cout} ch: as 2D {as_2d * 1e3:.2f} ms, summed kernel "
            f"{summed * 1e3:.2f} ms, speed-up {as_2d / summed:.2f}x (fwd+bwd)"
        )


if __name__ == "__main__":
    main()
