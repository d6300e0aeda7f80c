"""Data-loader throughput against the train step's consumption, in one run (docs/design.md, Data source API).

The grain pipeline (`data_pipeline.grain_pipeline`, OmniHuman-1 section 3.3 condition masking, reference
choice and pose-heatmap rendering per sample) must produce samples faster than the jitted train step eats
them. This script builds a small TFDS dataset of synthetic records at a preset's shapes (`small`: latents
(5, 32, 32, 16), 17 frames of audio features and keypoints), then measures in the same process:

- loader samples/s with 0, 1 and 2 grain worker processes (prefetching threads always on);
- train-step samples/s of the jitted step at the same preset and batch (a fixed device batch, compile
  excluded);
- the ratio loader / step for each worker count (target: >= 3x, so input never limits training).

  python -m benchmarks.data_loader --preset small --stage 3 --batch_size 4

Numbers from a shared CPU are noisy; on an accelerator the step is much faster and the ratio is the figure
to check. Nothing is downloaded; the dataset is written to --out (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_loader", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--preset", default="small", help="model/shape preset of configs/presets.py (default: small)"
    )
    p.add_argument(
        "--stage", type=int, default=3, choices=(1, 2, 3), help="training stage (3: all conditions)"
    )
    p.add_argument("--batch_size", type=int, default=4, help="global batch of loader and train step")
    p.add_argument("--records", type=int, default=32, help="synthetic records written to the dataset")
    p.add_argument("--workers", default="0,1,2", help="grain worker counts to measure, comma-separated")
    p.add_argument("--loader_batches", type=int, default=24, help="timed loader batches per worker count")
    p.add_argument("--warmup_batches", type=int, default=4, help="untimed loader batches (worker start-up)")
    p.add_argument("--train_steps", type=int, default=5, help="timed train steps (after one compile step)")
    p.add_argument("--out", default="", help="dataset folder (kept); default: a temporary folder, removed")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    return p


def make_config(preset: str, stage: int, batch_size: int, data_dir: str) -> Any:
    from configs.base import get_base_config

    cfg = get_base_config(stage, preset)
    cfg.batch_size = batch_size
    cfg.data.dir = data_dir
    cfg.metrics.tensorboard = False
    return cfg


def write_synthetic_dataset(cfg: Any, num_records: int, out: Path) -> None:
    """`num_records` synthetic records at the config's shapes, written by the TFDS writer."""
    from data_pipeline.synthetic import synthetic_record
    from data_pipeline.tfds_builder import write_dataset

    m, s = cfg.model, cfg.shape
    rng = np.random.default_rng(0)
    records = (
        synthetic_record(
            rng,
            f"bench{i:04d}",
            latent_frames=int(s.latent_frames),
            latent_hw=(int(s.latent_height), int(s.latent_width)),
            channels=int(m.latent_channels),
            text_len=int(s.text_len),
            text_dim=int(m.text_dim),
            audio_layers=int(m.audio_layers),
            audio_dim=int(m.audio_dim),
            num_refs=3,
        )
        for i in range(num_records)
    )
    write_dataset(records, out)


def loader_samples_per_s(cfg: Any, workers: int, warmup: int, batches: int) -> float:
    """Samples/s of `make_train_iterator` with `workers` grain processes, after `warmup` batches."""
    from data_pipeline.grain_pipeline import make_train_iterator

    cfg = cfg.copy_and_resolve_references()
    cfg.data.worker_count = workers
    it = make_train_iterator(cfg)
    try:
        for _ in range(warmup):
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        elapsed = time.perf_counter() - start
    finally:
        it.close()
    return batches * cfg.batch_size / elapsed


def train_step_samples_per_s(cfg: Any, batch: dict[str, np.ndarray], steps: int) -> tuple[float, float]:
    """(samples/s, compile seconds) of the jitted train step on one fixed batch."""
    import jax

    from omnihuman_jax import flops as flops_lib
    from omnihuman_jax import sharding as shd
    from omnihuman_jax.batch import sample_model_inputs, zeros_batch
    from omnihuman_jax.flow_matching import resolution_shift
    from omnihuman_jax.train_state import init_train_state, lr_schedule, make_optimizer
    from omnihuman_jax.train_step import jit_train_step, make_train_step
    from omnihuman_jax.trainer import build_model

    mesh = shd.make_mesh(dict(cfg.mesh))
    rules = cfg.sharding.logical_axis_rules
    model = build_model(cfg)
    optimizer = make_optimizer(cfg.optimizer, cfg.total_steps)
    shift = resolution_shift(flops_lib.tokens_per_sample(cfg), cfg.flow.shift, cfg.flow.base_shift_tokens)
    example = zeros_batch(cfg, cfg.batch_size)
    state, shardings = init_train_state(model, optimizer, sample_model_inputs(example), cfg.seed, mesh, rules)
    step_fn = jit_train_step(
        make_train_step(model, optimizer, cfg, shift, lr_schedule(cfg.optimizer, cfg.total_steps)),
        shardings,
        example,
        mesh,
        rules,
    )
    device_batch = shd.shard_batch(batch, mesh)
    start = time.perf_counter()
    state, metrics = step_fn(state, device_batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, device_batch)
    jax.block_until_ready(metrics)
    return steps * cfg.batch_size / (time.perf_counter() - start), compile_s


def run(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    from data_pipeline.grain_pipeline import make_train_iterator

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        cfg = make_config(args.preset, args.stage, args.batch_size, str(out))
        t0 = time.perf_counter()
        write_synthetic_dataset(cfg, args.records, out)
        build_s = time.perf_counter() - t0
        loader = {}
        for w in (int(x) for x in args.workers.split(",") if x.strip()):
            loader[w] = loader_samples_per_s(cfg, w, args.warmup_batches, args.loader_batches)
            print(f"loader, {w} grain workers: {loader[w]:.1f} samples/s", flush=True)
        it = make_train_iterator(cfg)
        batch = next(it)
        it.close()
        step, compile_s = train_step_samples_per_s(cfg, batch, args.train_steps)
        print(f"train step ({args.preset}, batch {args.batch_size}): {step:.2f} samples/s", flush=True)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    result = dict(
        preset=args.preset,
        stage=args.stage,
        batch_size=args.batch_size,
        records=args.records,
        device=str(jax.devices()[0].device_kind),
        device_count=jax.device_count(),
        dataset_build_s=round(build_s, 2),
        train_step_compile_s=round(compile_s, 2),
        train_step_samples_per_s=step,
        loader_samples_per_s={str(w): v for w, v in loader.items()},
        loader_over_step={str(w): v / step for w, v in loader.items()},
    )
    for w, v in loader.items():
        verdict = "ok" if v / step >= 3 else "BELOW the 3x target"
        print(f"ratio loader/step with {w} workers: {v / step:.1f}x ({verdict})", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
