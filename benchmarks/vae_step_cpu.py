"""The toy VAE's training step on CPU under different XLA:CPU flags, measured side by side in one run.

  PYTHONPATH=. python benchmarks/vae_step_cpu.py [--rounds 3] [--steps 10]

Each variant runs in its own subprocess (XLA reads its flags once per process); the variants take turns
in every round, so a load change on a shared host hits them alike. Each child builds the toy recipe's VAE
(`configs/toyworld.py`: latent 16, 4x spatial compression, motion and region L1), jits the real training
step (`omnihuman_jax.vae_train_step`) and times it on random uint8 frames and region maps: a single-frame
batch (the image phase of the curriculum) and a 5-frame batch (the video phase), batch 2, 64 x 64.

The variants: XLA:CPU's defaults, and `omnihuman_jax.xla_env.CPU_XLA_FLAGS`, which the launchers add on CPU.
The printed ratio is default / ours per step: above 1.0 means the launchers' flags are faster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

FRAMES = (1, 5)  # image-phase and video-phase batches


def child(steps: int) -> None:
    """Times the step in this process (XLA_FLAGS already set by the parent); prints one JSON line."""
    import jax
    import numpy as np

    from configs.toyworld import get_config
    from launch import train_vae as tv
    from omnihuman_jax import sharding as shd

    toy = get_config("proof").vae
    cfg = tv.default_config()
    cfg.latent_channels = toy.latent_channels
    cfg.spatial_compression_ratio = toy.spatial_compression_ratio
    cfg.loss.update(dict(toy.loss))
    _, mesh, state, _, step_fn = tv.build_training(cfg)
    rng = np.random.default_rng(0)
    out = {}
    for f in FRAMES:
        frames = rng.integers(0, 256, (2, f, 64, 64, 3), dtype=np.uint8)  # (B, F, H, W, 3)
        region = (rng.random((2, f, 64, 64)) < 0.05).astype(np.float32)  # (B, F, H, W)
        batch = shd.shard_batch({"frames": frames, "region": region}, mesh)
        for _ in range(2):  # compile and warm up
            state, metrics = step_fn(state, *batch.values())
            jax.block_until_ready(metrics)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            state, metrics = step_fn(state, *batch.values())
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t)
        out[str(f)] = statistics.median(times)
    print(json.dumps(out), flush=True)


def run_child(xla_flags: str, steps: int) -> dict[str, float]:
    env = dict(os.environ, XLA_FLAGS=f"{xla_flags} --xla_force_host_platform_device_count=1".strip())
    env["OMNIHUMAN_XLA_DEFAULTS"] = "0"  # the parent chose the flags
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", f"--steps={steps}"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"child with XLA_FLAGS={xla_flags!r} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="turns each variant takes")
    p.add_argument("--steps", type=int, default=10, help="timed steps per batch shape per turn")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.steps)
        return
    from omnihuman_jax.xla_env import CPU_XLA_FLAGS

    variants = {"XLA defaults": "", "launchers' CPU flags": CPU_XLA_FLAGS}
    results: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, flags in variants.items():
            results[name].append(run_child(flags, args.steps))
            print(f"round {r + 1}: {name}: {results[name][-1]}", flush=True)
    print(f"\nlaunchers' CPU flags: {CPU_XLA_FLAGS!r}  (median over {args.rounds} turns, s/step)")
    default, ours = results["XLA defaults"], results["launchers' CPU flags"]
    for f in FRAMES:
        d = statistics.median(x[str(f)] for x in default)
        o = statistics.median(x[str(f)] for x in ours)
        print(
            f"batch (2, {f}, 64, 64, 3): XLA defaults {d:.4f} s, launchers' flags {o:.4f} s, "
            f"default / ours {d / o:.2f}x"
        )


if __name__ == "__main__":
    main()
