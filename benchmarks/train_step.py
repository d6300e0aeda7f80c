"""Train-step benchmark on the host CPU: our jitted step vs diffusers' HunyuanVideo step.

  python -m benchmarks.train_step --preset=small --threads=2

One run prints: our step time, tokens/s and MFU against a square-matmul peak measured in the same run
(`omnihuman_jax.metrics.measure_matmul_peak`, same threads and dtype, measured before and after our step;
the higher reading is the denominator), then, where torch and diffusers import, the step time and MFU of
diffusers' `HunyuanVideoTransformer3DModel` (forward, backward and AdamW, fp32, same thread count) twice:
at the same latent and text shape, and with one more latent frame, which gives it our sequence length
(HunyuanVideo has no reference tokens), each with the ratio ours / theirs. Both MFUs use
`omnihuman_jax.flops` (tested against torch's FlopCounterMode and XLA's cost analysis). Our step is the
real training step (flow-matching loss, AdamW, grad clipping, EMA, NaN guard), run with the XLA:CPU flags
`launch.train` adds (`--no-launcher_flags` drops them). Both frameworks get exactly `--threads` intra-op
threads; XLA's flags are set here before jax is imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DEFAULT_XLA_FLAGS = ""


def make_parser(**kwargs) -> argparse.ArgumentParser:
    """The step's options; benchmarks.step_floor takes them too (as a parent, with add_help=False)."""
    kwargs.setdefault("description", __doc__)
    p = argparse.ArgumentParser(formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    p.add_argument("--preset", default="small", help="model preset from configs/presets.py (default small)")
    p.add_argument("--stage", type=int, default=1, help="training stage 1-3: which conditions are active")
    p.add_argument("--batch_size", type=int, default=1, help="global batch (default 1)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads for both frameworks")
    p.add_argument("--steps", type=int, default=5, help="timed steps per framework (best and median shown)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--remat", default="none", help="model.remat policy for our step")
    p.add_argument(
        "--scan_layers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="model.scan_layers for our step (default: the preset's)",
    )
    p.add_argument("--dtype", default="float32", help="our compute dtype (float32 or bfloat16)")
    p.add_argument("--attention", default="auto", help="our attention backend (auto: blocked on CPU)")
    p.add_argument("--platform", default="cpu", help="cpu (threads pinned) or gpu / tpu (one device)")
    p.add_argument("--latent_frames", type=int, default=0, help="override shape.latent_frames (0: preset)")
    p.add_argument("--xla_flags", default=DEFAULT_XLA_FLAGS, help="extra XLA_FLAGS set before jax imports")
    p.add_argument(
        "--launcher_flags",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the XLA:CPU flags launch.train adds (omnihuman_jax.xla_env; default on)",
    )
    p.add_argument("--skip_torch", action="store_true", help="do not time the diffusers model")
    p.add_argument(
        "--no_audio_pose",
        action="store_true",
        help="drop our audio and pose modules (closest to the plain HunyuanVideo graph)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return make_parser().parse_args(argv)


def set_thread_env(threads: int, xla_flags: str, platform: str = "cpu", launcher_flags: bool = False) -> None:
    """Pins both frameworks to `threads` intra-op threads; must run before jax / torch import.

    launcher_flags adds the XLA:CPU flags `launch.train` adds (omnihuman_jax.xla_env), so the step timed
    is the one the launcher runs; a flag named in `xla_flags` wins.
    """
    os.environ["XLA_FLAGS"] = f"{xla_flags} --xla_force_host_platform_device_count=1".strip()
    if launcher_flags:
        from omnihuman_jax import xla_env

        xla_env.apply(os.environ)
    os.environ["JAX_PLATFORMS"] = platform
    if platform != "cpu":
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    # XLA:CPU sizes its thread pool from the CPUs this process may run on: restrict them for both.
    if hasattr(os, "sched_setaffinity") and threads < len(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])


def timed(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def build_our_step(args) -> dict:
    """Our jitted train step and its inputs for `args` (preset, stage, batch, remat, dtype, attention...).

    Returns step (jit_train_step's callable), state, device_batch, config, flops (model FLOPs per step),
    and what benchmarks.step_floor needs besides: optimizer, mesh, rules.
    """
    import jax
    import numpy as np

    from configs.base import get_base_config
    from omnihuman_jax import flops as flops_lib
    from omnihuman_jax import sharding as shd
    from omnihuman_jax.batch import sample_model_inputs, zeros_batch
    from omnihuman_jax.models.dit import DiTConfig, OmniHumanDiT
    from omnihuman_jax.train_state import init_train_state, lr_schedule, make_optimizer
    from omnihuman_jax.train_step import jit_train_step, make_train_step

    config = get_base_config(args.stage, args.preset)
    config.batch_size = args.batch_size
    if args.latent_frames:
        config.shape.latent_frames = args.latent_frames
    config.model.update(dict(remat=args.remat, dtype=args.dtype, attention=args.attention))
    if args.scan_layers is not None:
        config.model.scan_layers = args.scan_layers
    overrides = dict(use_audio=False, use_pose=False) if args.no_audio_pose else {}
    model = OmniHumanDiT(DiTConfig.from_config(config.model, **overrides))
    mesh = shd.make_mesh(dict(config.mesh), jax.devices()[:1])
    rules = config.sharding.logical_axis_rules
    optimizer = make_optimizer(config.optimizer, config.total_steps)
    batch = zeros_batch(config, args.batch_size)
    rng = np.random.default_rng(0)
    for k, v in batch.items():
        if v.dtype == np.float32:
            batch[k] = np.abs(rng.normal(size=v.shape)).astype(np.float32)
    batch["condition_mask"][:] = True
    batch["text_mask"][:] = True
    state, shardings = init_train_state(model, optimizer, sample_model_inputs(batch), 0, mesh, rules)
    step = jit_train_step(
        make_train_step(model, optimizer, config, 1.0, lr_schedule(config.optimizer, 100)),
        shardings,
        batch,
        mesh,
        rules,
    )
    parts = dict(audio=False, pose=False) if args.no_audio_pose else {}
    return dict(
        step=step,
        state=state,
        device_batch=shd.shard_batch(batch, mesh),
        config=config,
        flops=flops_lib.train_flops_per_step(config, args.batch_size, **parts),
        optimizer=optimizer,
        mesh=mesh,
        rules=rules,
    )


def our_step(args) -> tuple[list[float], float, object]:
    import jax

    built = build_our_step(args)
    step, state, device_batch = built["step"], built["state"], built["device_batch"]
    t0 = time.perf_counter()
    compiled = step.lower(state, device_batch).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], device_batch)
        jax.block_until_ready(metrics["loss"])

    times = timed(run, args.steps, args.warmup)
    del compiled
    return times, compile_s, (built["config"], built["flops"])


def hunyuan_transformer(config):
    """diffusers' HunyuanVideoTransformer3DModel with our config's dimensions (no audio, pose, reference)."""
    from diffusers import HunyuanVideoTransformer3DModel

    m = config.model
    return HunyuanVideoTransformer3DModel(
        in_channels=m.latent_channels,
        out_channels=m.latent_channels,
        num_attention_heads=m.num_heads,
        attention_head_dim=m.hidden_size // m.num_heads,
        num_layers=m.num_dual_blocks,
        num_single_layers=m.num_single_blocks,
        num_refiner_layers=m.num_refiner_blocks,
        mlp_ratio=m.mlp_ratio,
        patch_size=m.patch_size,
        patch_size_t=1,
        guidance_embeds=False,
        text_embed_dim=m.text_dim,
        pooled_projection_dim=max(m.pooled_text_dim, 1),
        rope_theta=m.rope_theta,
        rope_axes_dim=tuple(m.rope_axes_dim),
    )


def diffusers_step(args, config, latent_frames: int) -> list[float] | None:
    try:
        import diffusers  # noqa: F401  (hunyuan_transformer imports it)
        import torch
    except ImportError as e:
        print(f"diffusers step skipped: {e}")
        return None
    torch.set_num_threads(args.threads)
    m, s = config.model, config.shape
    model = hunyuan_transformer(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = args.batch_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, m.latent_channels, latent_frames, s.latent_height, s.latent_width, generator=g)
    text = torch.randn(b, s.text_len, m.text_dim, generator=g)
    mask = torch.ones(b, s.text_len, dtype=torch.bool)
    pooled = torch.randn(b, max(m.pooled_text_dim, 1), generator=g)
    t = torch.full((b,), 500.0)
    target = torch.randn_like(x)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"diffusers HunyuanVideoTransformer3DModel: {n_params / 1e6:.1f}M params, "
        f"{torch.get_num_threads()} threads, latents ({latent_frames}, {s.latent_height}, {s.latent_width})"
    )

    def run():
        opt.zero_grad(set_to_none=True)
        out = model(x, t, text, mask, pooled, return_dict=False)[0]
        torch.nn.functional.mse_loss(out, target).backward()
        opt.step()

    return timed(run, args.steps, args.warmup)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_thread_env(args.threads, args.xla_flags, args.platform, args.launcher_flags)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from omnihuman_jax import flops as flops_lib
    from omnihuman_jax.metrics import measure_matmul_peak, peak_matmul_size

    measure_peak = lambda: measure_matmul_peak(dtype=jnp.dtype(args.dtype), repeats=5)
    peaks = [measure_peak()]
    print(
        f"device: {jax.devices()[0].device_kind}, threads={args.threads}, "
        f"XLA_FLAGS={os.environ['XLA_FLAGS']!r}"
    )
    times, compile_s, (config, flops) = our_step(args)
    peaks.append(measure_peak())
    # A cold or briefly loaded host reads low; the higher reading is the conservative denominator.
    peak = max(peaks)
    print(
        f"measured {args.dtype} matmul peak ({peak_matmul_size(jax.devices()[0].platform)}^3): "
        f"{peak / 1e9:.1f} GFLOP/s "
        f"(before our step {peaks[0] / 1e9:.1f}, after {peaks[1] / 1e9:.1f}; the higher is used)"
    )
    ours = float(np.median(times))
    tokens = flops_lib.tokens_per_sample(config) * args.batch_size
    print(
        f"ours: preset={args.preset} stage={args.stage} batch={args.batch_size} remat={args.remat} "
        f"dtype={args.dtype}: compile {compile_s:.1f} s, step median {ours:.3f} s (best {min(times):.3f} s), "
        f"{tokens / ours:.0f} video tokens/s, model FLOPs {flops / 1e9:.1f} G/step, "
        f"MFU {flops / ours / peak:.1%} of the measured peak"
    )
    if args.skip_torch:
        return 0
    # HunyuanVideo has no reference tokens: at the same latent shape its sequence is shorter than ours by
    # one latent frame's tokens, so it is also timed with one more latent frame (the same sequence length).
    frames = config.shape.latent_frames
    for label, t in (("same latent shape", frames), ("same sequence length", frames + 1)):
        theirs_times = diffusers_step(args, config, t)
        if theirs_times is None:
            return 0
        theirs = float(np.median(theirs_times))
        shape = config.shape.copy_and_resolve_references()
        shape.latent_frames = t
        their_flops = (
            args.batch_size
            * 3
            * flops_lib.forward_flops_per_sample(
                config.model, shape, audio=False, pose=False, reference=False
            )
        )
        print(
            f"diffusers, {label}: step median {theirs:.3f} s (best {min(theirs_times):.3f} s), "
            f"model FLOPs {their_flops / 1e9:.1f} G/step, "
            f"MFU {their_flops / theirs / peak:.1%} of the measured peak"
        )
        print(f"ratio ours/theirs, {label} (median step time): {ours / theirs:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
