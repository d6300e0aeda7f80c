"""Flow-matching ODE sampler (OmniHuman-1 section 3.4; SD3 / HunyuanVideo rectified-flow conventions).

The flow runs from noise at t = 1 to data at t = 0 (docs/design.md): x_t = (1 - t) x_0 + t noise, and the
network predicts the velocity v = noise - x_0 = dx_t / dt. Integrating dx/dt = v from t to t' < t gives

    Euler:  x_{t'} = x_t + (t' - t) v(x_t, t)
    Heun:   x~ = x_t + (t' - t) v(x_t, t);  x_{t'} = x_t + (t' - t) (v(x_t, t) + v(x~, t')) / 2

Heun skips its correction on the last step (t' = 0), as EDM does, so it costs 2 N - 1 evaluations for N
steps. The grid is uniform in [1, 0] and then shifted with `flow_matching.shift_timesteps`, the same shift the
model was trained with. Frames given as motion frames are known: before every evaluation their x_t is put on
the known straight line (1 - t) x_0 + t noise, which is exactly how the training batch built them, and the
result keeps x_0 there.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from omnihuman_jax.flow_matching import shift_timesteps

SOLVERS = ("euler", "heun")

# (x_t (B, T, h, w, C), t () float32, step index) -> velocity (B, T, h, w, C)
VelocityFn = Callable[[jax.Array, jax.Array, int], jax.Array]


def timestep_grid(num_steps: int, shift: float) -> np.ndarray:
    """(num_steps + 1,) float32 times from 1 down to 0: t_i = shift_timesteps(1 - i / N, shift)."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}: need at least 1 denoising step")
    if shift <= 0:
        raise ValueError(f"shift={shift}: the timestep shift must be positive")
    uniform = np.linspace(1.0, 0.0, num_steps + 1, dtype=np.float64)
    return np.asarray(shift_timesteps(uniform, float(shift)), np.float32)


def euler_step(x: jax.Array, v: jax.Array, t: float, t_next: float) -> jax.Array:
    return x + (t_next - t) * v


def clamp_known(
    x: jax.Array, t: float, noise: jax.Array, known: jax.Array | None, known_mask: jax.Array | None
) -> jax.Array:
    """Puts x_t at known latent frames on (1 - t) known + t noise. known_mask (B, T) bool."""
    if known is None or known_mask is None:
        return x
    m = known_mask.astype(bool)[:, :, None, None, None]  # (B, T, 1, 1, 1)
    return jnp.where(m, (1.0 - t) * known + t * noise, x)


def sample_flow(
    velocity_fn: VelocityFn,
    noise: jax.Array,
    timesteps: np.ndarray,
    *,
    solver: str = "euler",
    known: jax.Array | None = None,
    known_mask: jax.Array | None = None,
    on_step: Callable[[int], None] | None = None,
) -> jax.Array:
    """Integrates the flow from `noise` (x at timesteps[0], normally 1) to timesteps[-1] (normally 0).

    noise (B, T, h, w, C); `known` (B, T, h, w, C) clean latents at the frames where `known_mask` (B, T) is
    True (motion frames). `on_step(i)` is called after step i (progress bars). Returns x_0 (B, T, h, w, C).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r}: choose one of {SOLVERS}")
    ts = [float(t) for t in np.asarray(timesteps)]
    if len(ts) < 2 or any(b >= a for a, b in zip(ts, ts[1:], strict=False)):
        raise ValueError(f"timesteps must decrease strictly and hold at least 2 values, got {ts}")
    x = clamp_known(noise, ts[0], noise, known, known_mask)
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        v = velocity_fn(x, jnp.float32(t), i)
        x_next = euler_step(x, v, t, t_next)
        if solver == "heun" and t_next > 0.0:
            x_next = clamp_known(x_next, t_next, noise, known, known_mask)
            v_next = velocity_fn(x_next, jnp.float32(t_next), i)
            x_next = x + (t_next - t) * 0.5 * (v + v_next)
        x = clamp_known(x_next, t_next, noise, known, known_mask)
        if on_step is not None:
            on_step(i)
    return x


def evaluations_per_sample(num_steps: int, solver: str) -> int:
    """Velocity evaluations `sample_flow` makes: N for Euler, 2 N - 1 for Heun."""
    return num_steps if solver == "euler" else 2 * num_steps - 1
