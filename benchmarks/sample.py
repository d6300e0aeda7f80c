"""Seconds per denoising step of the sampler: batched multi-condition CFG vs. one forward per branch.

OmniHuman-1 section 3.4 guides text and audio, which takes three predictions per step (no text/audio,
text only, both). `omnihuman_jax.guidance` runs them as ONE forward over a 3x batch; the baseline runs three
forwards of batch 1 and combines them. Both are timed in the same run, on random params of a preset (no VAE:
latents only), over `--steps` Euler steps, `--repeats` rounds in which the two take turns (best reported,
compile excluded). It runs with the XLA:CPU flags `launch.sample` adds (`omnihuman_jax.xla_env`;
OMNIHUMAN_XLA_DEFAULTS=0 leaves XLA_FLAGS alone).

  python -m benchmarks.sample --preset small --steps 2 --repeats 1
  python -m benchmarks.sample --platform gpu --dtype bfloat16 --attention cudnn   # benchmarks/gpu_session.sh
"""

from __future__ import annotations

import argparse
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs.base import get_base_config
from omnihuman_jax import xla_env
from omnihuman_jax.batch import sample_model_inputs, zeros_batch
from omnihuman_jax.guidance import branch_velocities, combine, guidance_mode, make_guided_velocity
from omnihuman_jax.models.dit import DiTConfig, OmniHumanDiT
from omnihuman_jax.sampling import sample_flow, timestep_grid


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", help="Model preset (configs/presets.py).")
    p.add_argument("--steps", type=int, default=2, help="Denoising steps per timed run.")
    p.add_argument("--repeats", type=int, default=1, help="Timed runs per variant; the best is reported.")
    p.add_argument("--latent_frames", type=int, help="Latent frames; default: the preset's shape.")
    p.add_argument("--latent_size", type=int, help="Latent height = width; default: the preset's shape.")
    p.add_argument("--seed", type=int, default=0, help="Seed of params and inputs.")
    p.add_argument("--dtype", default="float32", help="Compute dtype of the model (float32 or bfloat16).")
    p.add_argument("--attention", default="auto", help="model.attention (auto: blocked on CPU).")
    p.add_argument("--platform", default="", help="cpu, gpu or tpu; default: JAX's own choice.")
    return p.parse_args()


def setup(args: argparse.Namespace):
    config = get_base_config(stage=2, preset=args.preset)
    if args.latent_frames:
        config.shape.latent_frames = args.latent_frames
    if args.latent_size:
        config.shape.latent_height = config.shape.latent_width = args.latent_size
    config.model.update(dict(dtype=args.dtype, attention=args.attention))
    model = OmniHumanDiT(DiTConfig.from_config(config.model))
    rng = np.random.default_rng(args.seed)
    batch = zeros_batch(config, 1)
    for k, v in batch.items():
        if v.dtype == np.float32:
            batch[k] = rng.standard_normal(v.shape).astype(np.float32)
    batch["text_mask"][:] = True
    batch["condition_mask"][:] = True
    inputs = {k: jnp.asarray(v) for k, v in sample_model_inputs(batch).items()}
    params = nn.unbox(jax.jit(model.init)(jax.random.key(args.seed), inputs, jnp.zeros((1,)))["params"])
    inputs.pop("condition_mask")  # each guidance branch sets its own
    return config, model, params, inputs


def time_samplers(velocity_fns: dict, noise, timesteps, repeats: int) -> dict[str, float]:
    """Best seconds per step of each sampler over `repeats` rounds, after one warm-up (compile) call each.

    The samplers take turns within every round, so a change in the machine's load hits all of them alike.
    """
    for fn in velocity_fns.values():
        jax.block_until_ready(fn(noise, jnp.float32(1.0), 0))
    best = dict.fromkeys(velocity_fns, float("inf"))
    for _ in range(repeats):
        for name, fn in velocity_fns.items():
            start = time.perf_counter()
            jax.block_until_ready(sample_flow(fn, noise, timesteps))
            best[name] = min(best[name], (time.perf_counter() - start) / (len(timesteps) - 1))
    return best


def main() -> None:
    args = parse()
    if args.platform:
        jax.config.update("jax_platforms", args.platform)  # before the backend starts
    config, model, params, inputs = setup(args)
    mode = guidance_mode("audio")
    s_text, s_audio = jnp.float32(3.0), jnp.float32(2.5)
    guided = make_guided_velocity(model, mode)
    apply = jax.jit(model.apply)

    def batched(x, t, i):
        return guided(params, dict(inputs, noisy_latents=x), jnp.full((1,), t), s_text, s_audio)

    def separate(x, t, i):
        branches = branch_velocities(apply, params, dict(inputs, noisy_latents=x), jnp.full((1,), t), mode)
        return combine(branches, s_text, s_audio)

    noise = jax.random.normal(jax.random.key(args.seed), inputs["noisy_latents"].shape)
    timesteps = timestep_grid(args.steps, 1.0)
    same = float(jnp.max(jnp.abs(batched(noise, 0.5, 0) - separate(noise, 0.5, 0))))
    best = time_samplers(dict(batched=batched, separate=separate), noise, timesteps, args.repeats)
    t_batched, t_separate = best["batched"], best["separate"]
    s = config.shape
    print(
        f"preset={args.preset} latents=({s.latent_frames}, {s.latent_height}, {s.latent_width}) "
        f"steps={args.steps} repeats={args.repeats} dtype={args.dtype} attention={args.attention} "
        f"devices={jax.device_count()} ({jax.devices()[0].platform}) "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    print(f"batched CFG (1 forward, 3 branches): {t_batched:.3f} s/step")
    print(f"separate forwards (3 x batch 1):    {t_separate:.3f} s/step")
    print(f"speedup separate / batched: {t_separate / t_batched:.2f}x  (max |difference| {same:.2e})")


if __name__ == "__main__":
    xla_env.apply()  # before the first computation starts JAX's backend, as in launch.sample
    main()
