"""The toy-world main job: world -> dataset -> VAE -> stages 1, 2, 3 -> a sampled video -> metrics.

  python -m launch.toyworld --workdir=runs/toyworld [--recipe=quick|proof|smoke]

Each step runs the project's own CLI in a subprocess, the path a user would take (OmniHuman-1 sections
3.3-3.4 at toy scale; the recipe is configs/toyworld.py):
1. `data_pipeline.toyworld.generate` -> WORKDIR/world (the last identities are held out, split `eval`),
   and the VAE's own world of many other identities -> WORKDIR/vae_world;
2. `data_pipeline.build` of the VAE world, frames only -> WORKDIR/vae_frames;
3. `launch.train_vae` -> WORKDIR/vae (diffusers format);
4. `data_pipeline.build` again with `--vae WORKDIR/vae` -> WORKDIR/data (latents);
5. `launch.train` stage 1, 2, 3 -> WORKDIR/stage{1,2,3}, each `--config.checkpoint.init_from` the previous;
6. `launch.sample` on held-out clips' reference frame, driving audio (and keypoints for pose driving)
   -> WORKDIR/samples/<mode>/<clip_id>.mp4;
7. `launch.evaluate` metrics of those videos and of the ground-truth clips -> WORKDIR/metrics.{json,md},
   and a strip of frames of the first audio-driven video -> WORKDIR/frames.png.
A step whose output exists is skipped, so running again resumes; training steps resume from checkpoints.

  python -m launch.toyworld --workdir=W --recipe=proof --validate=W/stage3 [--modes=pose] [--name=NAME]

samples and scores a trained checkpoint on the validation world (WORKDIR/val_world: a third seed, none of
its identities trained on or used for evaluation) -> WORKDIR/validation/NAME.{json,md}. Compare recipe
variants there, not on the held-out identities that the learning proof reports.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from omnihuman_jax import xla_env

SAMPLE_MODES = ("audio", "pose")  # the main job's driving modes: audio only, then pose only
CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # stage files, found from any working directory


def _log(msg: str) -> None:
    print(f"[toyworld] {msg}", flush=True)


def run_cli(args: list[str], root: Path, log_name: str) -> None:
    """Runs `python -m ...` with output appended to ROOT/logs/LOG_NAME; a failure raises with the log's tail.

    Every step shares JAX's persistent compilation cache in ROOT/jax_cache: the recipe's many sampling
    and training processes compile the same programs (same shapes, other params), and a cache hit skips
    the compile (a sampled clip: about 37 s -> 22 s on 2 CPU cores).
    """
    log_path = root / "logs" / log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(args)}\n")
        log.flush()
        code = subprocess.call(
            [sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=CONFIGS.parent
        )
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(
            f"`python -m {' '.join(args[:1])}` failed with status {code}; log {log_path}:\n{tail}"
        )


def overrides(pairs: Any, prefix: str = "") -> list[str]:
    """(KEY, VALUE) pairs -> ['--config.KEY=VALUE', ...]; a mapping VALUE gives KEY.SUBKEY flags."""
    out = []
    for key, value in pairs:
        if isinstance(value, Mapping | ml_collections.ConfigDict):
            out += overrides(value.items(), f"{prefix}{key}.")
            continue
        if isinstance(value, tuple | list):
            value = "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
        out.append(f"--config.{prefix}{key}={value}")
    return out


def step_world(cfg: Any, root: Path, name: str = "world") -> Path:
    """Generates the world `cfg.<name>` (`world`, the VAE's `vae_world` or `val_world`) -> WORKDIR/<name>."""
    world = root / name
    if (world / "manifest.jsonl").is_file():
        return world
    w = cfg[name]
    args = ["data_pipeline.toyworld.generate", "--out", str(world), "--overwrite"]
    for key in ("num_identities", "clips_per_identity", "seed", "height", "width", "fps", "seconds",
                "eval_identities", "audio_clean_rate", "pose_clean_rate", "camera_motion_rate"):  # fmt: skip
        args += [f"--{key}", str(w[key])]
    run_cli(args, root, f"{name}.log")
    return world


def _dataset_built(data_dir: Path) -> bool:
    return any((data_dir / "omnihuman_clips").glob("*/dataset_info.json"))


def step_build(cfg: Any, root: Path, world: Path, name: str, vae: Path | None) -> Path:
    data_dir = root / name
    if _dataset_built(data_dir):
        return data_dir
    d = cfg.data
    args = [
        "data_pipeline.build", "--manifest", str(world / "manifest.jsonl"), "--out", str(data_dir),
        "--split", "train", "--audio_frontend", "logmel", "--mel_bins", str(d.mel_bins),
        "--mel_groups", str(d.mel_groups), "--clip_frames", str(d.clip_frames),
        "--clip_stride", str(d.clip_stride), "--pixel_budget", str(d.pixel_budget),
        "--workers", str(d.workers), "--no_progress",
    ]  # fmt: skip
    if vae is not None:
        args += ["--vae", str(vae)]
    run_cli(args, root, f"{name}.log")
    return data_dir


def step_vae(cfg: Any, root: Path, frames_dir: Path) -> Path:
    vae = root / "vae"
    if (vae / "config.json").is_file():
        return vae
    args = ["launch.train_vae", f"--data_dir={frames_dir}", f"--workdir={root / 'vae_train'}", f"--out={vae}"]
    run_cli(args + overrides(cfg.vae.items()), root, "vae.log")
    return vae


def finished_step(workdir: Path) -> int:
    ckpt = workdir / "checkpoints"
    steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.is_dir() else []
    return max(steps, default=0)


def step_stage(
    cfg: Any, root: Path, stage: int, data: Path, vae: Path, init_from: Path | None, name: str = "",
    extra: Any = (),
) -> Path:  # fmt: skip
    """Trains one stage (or an ablation variant `name` with `extra` overrides) to its total_steps."""
    name = name or f"stage{stage}"
    workdir = root / name
    stage_pairs = dict(list(cfg.stages[f"stage{stage}"]) + list(extra))  # `extra` wins
    total = stage_pairs["total_steps"]
    if finished_step(workdir) >= total:
        return workdir
    args = [
        "launch.train", f"--config={CONFIGS / f'stage{stage}.py'}:{cfg.preset}", f"--workdir={workdir}",
        f"--config.data.dir={data}", f"--config.vae.path={vae}",
    ]  # fmt: skip
    if init_from is not None:
        args.append(f"--config.checkpoint.init_from={init_from}")
    run_cli(args + overrides(cfg.train) + overrides(stage_pairs.items()), root, f"{name}.log")
    return workdir


def eval_inputs(
    world: Path, root: Path, count: int, folder: str = "eval_inputs"
) -> list[dict[str, Path | str]]:
    """Reference PNG, driving wav and keypoints of the first `count` held-out clips with clean audio.

    The PNG and wav are written to ROOT/<folder>, one folder per world (clip ids repeat across worlds).
    """
    from PIL import Image

    from data_pipeline.toyworld import render
    from launch.evaluate import eval_clip_ids, load_truth

    out = []
    for cid in eval_clip_ids(world):
        truth = load_truth(world, cid)
        if str(truth["audio_corruption"]) != "none" or float(truth["hands_dropped_fraction"]) > 0.1:
            continue
        out_dir = root / folder
        out_dir.mkdir(parents=True, exist_ok=True)
        image, wav = out_dir / f"{cid}.png", out_dir / f"{cid}.wav"
        if not image.is_file():
            Image.fromarray(truth["reference_frame"]).save(image)
        if not wav.is_file():
            render.write_wav(
                wav,
                truth["driving_audio"],
                int(json.loads((world / "toyworld.json").read_text())["sample_rate"]),
            )
        out.append(dict(clip_id=cid, image=image, audio=wav, pose=world / "clips" / f"{cid}.kp.npy"))
        if len(out) == count:
            break
    if not out:
        raise RuntimeError(f"{world} has no held-out clip with clean audio and pose; raise eval_identities")
    return out


def step_sample(
    cfg: Any, root: Path, checkpoint: Path, vae: Path, inputs: list[dict], mode: str, folder: str = "",
    sampling: dict | None = None,
) -> Path:  # fmt: skip
    """One video per held-out clip, driven by `mode` (audio / pose / combined) -> samples/<folder>/.

    One `launch.sample --jobs` process samples every clip not yet there, so the checkpoint is loaded and
    its programs compiled once (each process start cost about 9 s a clip on 2 CPU cores).
    """
    from omnihuman_jax.checkpointing import load_run_config

    s = dict(cfg.sampling, **(sampling or {}))
    out_dir = root / "samples" / (folder or mode)
    # A model with model.audio_gate takes its mouth region from the keypoints in every mode.
    gated = bool(load_run_config(str(checkpoint)).get("model", {}).get("audio_gate", False))
    jobs = []
    for item in inputs:
        out = out_dir / f"{item['clip_id']}.mp4"
        if out.is_file():
            continue
        job = {"image": str(item["image"]), "audio": str(item["audio"]), "out": str(out)}
        if mode in ("pose", "combined") or gated:
            job["pose"] = str(item["pose"])
        jobs.append(job)
    if not jobs:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs_file = out_dir / "jobs.jsonl"
    jobs_file.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    args = [
        "launch.sample", "--checkpoint", str(checkpoint), "--vae", str(vae), "--jobs", str(jobs_file),
        "--mode", mode, "--steps", str(s["steps"]), "--solver", s["solver"],
        "--seed", str(s["seed"]), "--cfg_audio", str(s["cfg_audio"]), "--cfg_text", str(s["cfg_text"]),
        "--cfg_schedule", s["cfg_schedule"], "--cfg_floor", str(s["cfg_floor"]),
        "--fps", str(cfg.world.fps), "--overwrite",
    ]  # fmt: skip
    if mode == "pose":
        args += ["--cfg_pose", str(s.get("cfg_pose", 1.0))]
    run_cli(args, root, f"sample_{folder or mode}.log")
    return out_dir


def score(world: Path, folder: Path, fps: float) -> dict[str, float]:
    """Mean metrics of a folder of samples, and `sync_swapped` (the chance level) when it has 2+ videos."""
    from launch.evaluate import evaluate_videos, find_videos, summarize

    videos = find_videos(folder, world)
    return summarize(evaluate_videos(world, videos, fps, swap_audio=len(videos) >= 2))


def score_truth(world: Path, clip_ids: list[str], fps: float) -> dict[str, float]:
    from launch.evaluate import evaluate_videos, summarize

    return summarize(evaluate_videos(world, {c: world / "clips" / f"{c}.mp4" for c in clip_ids}, fps))


def run_recipe(cfg: Any, root: Path) -> dict[str, dict[str, float]]:
    """The main job; returns the metrics rows (ground truth, then each driving mode)."""
    from launch.evaluate import format_table

    root = Path(root).resolve()  # subprocesses run in the repository root
    root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        _log(f"{name} ...")
        out = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - t0, 1)
        _log(f"{name} done in {timings[name]:.1f} s")
        return out

    world = timed("world", step_world, cfg, root)
    vae_world = timed("vae_world", step_world, cfg, root, "vae_world")
    frames = timed("vae_frames", step_build, cfg, root, vae_world, "vae_frames", None)
    vae = timed("vae", step_vae, cfg, root, frames)
    data = timed("data", step_build, cfg, root, world, "data", vae)
    prev = None
    for stage in (1, 2, 3):
        prev = timed(f"stage{stage}", step_stage, cfg, root, stage, data, vae, prev)
    inputs = eval_inputs(world, root, int(cfg.eval.clips))
    rows = sampled_rows(cfg, root, world, prev, vae, inputs, SAMPLE_MODES, run=timed)
    video = sorted((root / "samples" / SAMPLE_MODES[0]).glob("*.mp4"))[0]
    first_frames_strip(video, root / "frames.png")
    table = format_table(rows)
    (root / "metrics.md").write_text(table + "\n")
    (root / "metrics.json").write_text(json.dumps({"rows": rows, "timings_s": timings}, indent=2) + "\n")
    print(table, flush=True)
    return rows


def sampled_rows(
    cfg: Any, root: Path, world: Path, checkpoint: Path, vae: Path, inputs: list[dict],
    modes: tuple[str, ...], prefix: str = "", run: Any = None,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Ground-truth row of `inputs`, then one row per driving mode of `checkpoint`'s samples of them.

    Samples land in ROOT/samples/<prefix><mode>; `run(name, fn, *args)` wraps each sampling step (timing).
    """
    run = run or (lambda _name, fn, *args, **kw: fn(*args, **kw))
    rows = {"ground truth": score_truth(world, [str(i["clip_id"]) for i in inputs], cfg.world.fps)}
    for mode in modes:
        folder = f"{prefix}{mode}"
        out = run(f"sample_{folder}", step_sample, cfg, root, checkpoint, vae, inputs, mode, folder=folder)
        rows[f"{mode}-driven"] = score(world, out, cfg.world.fps)
    return rows


def validate(
    cfg: Any, root: Path, checkpoint: Path, modes: tuple[str, ...] = SAMPLE_MODES, name: str = ""
) -> dict[str, dict[str, float]]:
    """Metrics of `checkpoint`'s samples on the validation world's clips -> ROOT/validation/NAME.{json,md}.

    Uses the run's VAE (ROOT/vae) and the recipe's sampling flags, as the main job's rows do.
    """
    from launch.evaluate import format_table

    root, checkpoint = Path(root).resolve(), Path(checkpoint).resolve()
    vae = root / "vae"
    if not (vae / "config.json").is_file():
        raise RuntimeError(f"{root} has no trained VAE ({vae}); run the main job in this workdir first")
    if not (checkpoint / "checkpoints").is_dir():
        raise RuntimeError(
            f"{checkpoint} is not a training run folder (no checkpoints/); pass e.g. {root}/stage3"
        )
    name = name or checkpoint.name
    world = step_world(cfg, root, "val_world")
    inputs = eval_inputs(world, root, int(cfg.eval.clips), folder="val_inputs")
    rows = sampled_rows(cfg, root, world, checkpoint, vae, inputs, modes, prefix=f"val_{name}_")
    out = root / "validation"
    out.mkdir(exist_ok=True)
    table = format_table(rows)
    (out / f"{name}.md").write_text(f"validation world, checkpoint {checkpoint}\n\n{table}\n")
    (out / f"{name}.json").write_text(
        json.dumps({"checkpoint": str(checkpoint), "rows": rows}, indent=2) + "\n"
    )
    print(table, flush=True)
    return rows


def first_frames_strip(video: Path, out_png: Path, count: int = 8) -> None:
    """A horizontal strip of `count` evenly spaced frames of an mp4, as PNG."""
    from PIL import Image

    from data_pipeline.toyworld import render

    frames = render.read_mp4(video)  # (F, H, W, 3)
    idx = np.linspace(0, frames.shape[0] - 1, count).round().astype(int)
    Image.fromarray(np.concatenate(list(frames[idx]), axis=1)).save(out_png)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.toyworld", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="run folder; every step's output lands here (resumable)")
    p.add_argument("--recipe", default="quick", help="configs/toyworld.py recipe: quick, proof or smoke")
    p.add_argument(
        "--validate", default="", metavar="CHECKPOINT",
        help="instead of the main job: sample and score this training run folder (e.g. W/stage3) on the "
        "validation world, whose identities neither train nor evaluate; needs W's VAE",
    )  # fmt: skip
    p.add_argument(
        "--modes", default=",".join(SAMPLE_MODES), help="--validate's driving modes, comma-separated"
    )
    p.add_argument("--name", default="", help="--validate's result name (default: the checkpoint folder's)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from configs.toyworld import get_config

    try:
        cfg = get_config(args.recipe)
        if args.validate:
            modes = tuple(m for m in args.modes.split(",") if m)
            if not modes or set(modes) - {"audio", "pose", "combined"}:
                raise ValueError(f"--modes={args.modes!r}: choose from audio, pose, combined")
            validate(cfg, Path(args.workdir), Path(args.validate), modes, args.name)
        else:
            run_recipe(cfg, Path(args.workdir))
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    xla_env.apply()  # its stages run as subprocesses, which inherit XLA_FLAGS
    raise SystemExit(main())
