"""Generate a talking / moving human video from a reference image and audio (OmniHuman-1 section 3.4).

  python -m launch.sample --checkpoint runs/s2 --image ref.png --audio speech.wav --out out.mp4

The audio's length sets the video length (round(duration * fps) frames), generated in segments joined by
5 motion frames (omnihuman_jax.long_video) with batched multi-condition CFG and CFG annealing
(omnihuman_jax.guidance). The image is fitted to its nearest aspect-ratio bucket and the video keeps that
ratio. Audio, text and pose go through the data pipeline's own featurization code, so they match what the
checkpoint was trained on. Every input is checked before any compute: a bad one exits with status 2 and a
message on stderr. Writes OUT (mp4 with the input audio as AAC) and OUT's stem + `_contact.png`.

Many videos from one checkpoint: `--jobs FILE` (JSON lines of {"image", "audio", "out"} plus optional "pose"
and "prompt"; the other flags apply to every line). The checkpoint and VAE are read and the programs
compiled once, and every line is checked before the first video is sampled; each video is the one a
single run with the same flags writes.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np

from launch.sample_inputs import Job, SampleError, validate
from launch.sample_output import ContactSheet, VideoWriter, contact_sheet_path
from omnihuman_jax import xla_env


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.sample", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--image", help="Reference image (PNG/JPEG, any aspect ratio). Required unless --jobs.")
    a(
        "--audio",
        help="Driving audio: wav/flac/mp3, or a video whose audio track is used. Required unless --jobs.",
    )
    a(
        "--pose",
        help="Optional keypoints (.npy (F, 133, 3) or .json), pixels of --image, one per output frame. "
        "Required by checkpoints with model.audio_gate, which take the mouth region from them in every mode.",
    )
    a("--prompt", default="", help="Optional text prompt (needs --text_encoder).")
    a("--checkpoint", required=True, help="Training workdir (newest step) or one checkpoint step folder.")
    a("--use_ema", action=argparse.BooleanOptionalAction, default=True, help="EMA params (default) or raw.")
    a("--vae", help="Diffusers-format VAE folder; default: the run config's vae.path.")
    a(
        "--audio_frontend",
        choices=("wav2vec2", "logmel"),
        help="Default: wav2vec2 with --wav2vec, else logmel.",
    )
    a("--wav2vec", help="Local Wav2Vec2Model folder (the wav2vec2 frontend).")
    a("--wav2vec_layers", help="Comma-separated wav2vec2 hidden-state indices; default: all.")
    a("--mel_bins", type=int, help="Log-mel bins; default: the checkpoint's model.audio_dim.")
    a("--mel_groups", type=int, help="Log-mel sub-windows per frame; default: model.audio_layers.")
    a("--text_encoder", help="Local text-encoder folder with its tokenizer (as used by data_pipeline.build).")
    a(
        "--mode",
        choices=("auto", "audio", "pose", "combined"),
        default="auto",
        help="Driving conditions: auto = combined with --pose, else audio; pose = pose-only (audio off).",
    )
    a("--steps", type=int, default=30, help="Denoising steps per segment.")
    a("--shift", type=float, help="Timestep shift; default: the run config's flow shift.")
    a("--solver", choices=("euler", "heun"), default="euler", help="ODE solver.")
    a("--seed", type=int, default=0, help="Noise seed (segment n uses fold_in(seed, n)).")
    a("--cfg_text", type=float, default=3.0, help="Text guidance scale at the first step.")
    a("--cfg_audio", type=float, default=3.0, help="Audio guidance scale at the first step.")
    a(
        "--cfg_pose",
        type=float,
        default=1.0,
        help="Pose guidance scale at the first step, --mode=pose only; 1 (the default, as in the paper) is "
        "off, other values add a pose-dropped branch (omnihuman_jax.guidance).",
    )
    a(
        "--cfg_schedule",
        choices=("constant", "linear", "cosine"),
        default="linear",
        help="CFG annealing from the start scales down to --cfg_floor (omnihuman_jax.guidance).",
    )
    a("--cfg_floor", type=float, default=1.0, help="Scale reached on the last step (never above the start).")
    a("--fps", type=float, default=25.0, help="Output frame rate.")
    a("--segment_frames", type=int, help="Frames per segment, 1 + 4k; default: the training clip length.")
    a("--pixel_budget", type=int, help="Bucket area in pixels; default: the training latent size, in pixels.")
    a("--contact_frames", type=int, default=8, help="Frames on the PNG contact sheet.")
    a("--out", help="Output .mp4 path. Required unless --jobs.")
    a(
        "--jobs",
        help='JSON-lines file, one video per line: {"image", "audio", "out"} and optional "pose", "prompt" '
        "(instead of --image/--audio/--out/--pose/--prompt); the checkpoint is loaded and compiled once.",
    )
    a("--overwrite", action="store_true", help="Replace existing outputs (refused otherwise).")
    return p


def text_inputs(job: Job) -> tuple[np.ndarray, np.ndarray]:
    """(1, L, D_text) embedding and (1, L) mask; no encoder: the null prompt (zeros, first token valid)."""
    n, d = int(job.config.shape.text_len), job.dit.text_dim
    if not job.args.text_encoder:
        mask = np.zeros((1, n), bool)
        mask[:, 0] = True
        return np.zeros((1, n, d), np.float32), mask
    from data_pipeline.text_features import TextEncoder

    emb, mask = TextEncoder(job.args.text_encoder, n)(job.args.prompt)
    return emb[None], mask[None]


# The per-video fields a --jobs line sets (the rest of the flags are shared by every line).
JOB_FIELDS = ("image", "audio", "out", "pose", "prompt")


def read_jobs(args: argparse.Namespace) -> list[argparse.Namespace]:
    """One Namespace per video: --image/--audio/--out, or each line of --jobs over the shared flags."""
    if not args.jobs:
        missing = [f"--{f}" for f in ("image", "audio", "out") if not getattr(args, f)]
        if missing:
            raise SampleError(f"{', '.join(missing)} required (or --jobs FILE for many videos)")
        return [args]
    given = [f"--{f}" for f in JOB_FIELDS if getattr(args, f)]
    if given:
        raise SampleError(f"--jobs sets {', '.join(given)} per line; do not pass them as flags too")
    path = Path(args.jobs)
    if not path.is_file():
        raise SampleError(f"--jobs {path} does not exist")
    jobs, outs = [], set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise SampleError(f"--jobs {path} line {n}: not JSON ({e})") from e
        if not isinstance(entry, dict):
            raise SampleError(f"--jobs {path} line {n}: give an object with image, audio and out")
        unknown = sorted(set(entry) - set(JOB_FIELDS))
        missing = [k for k in ("image", "audio", "out") if not entry.get(k)]
        if unknown or missing:
            raise SampleError(
                f"--jobs {path} line {n}: unknown keys {unknown} / missing {missing}; each line takes "
                f"{', '.join(JOB_FIELDS)} (image, audio and out required)"
            )
        out = str(Path(entry["out"]).resolve())
        if out in outs:
            raise SampleError(f"--jobs {path} line {n}: out {entry['out']} is already another line's")
        outs.add(out)
        jobs.append(argparse.Namespace(**{**vars(args), "pose": None, "prompt": "", **entry}))
    if not jobs:
        raise SampleError(f"--jobs {path} has no lines")
    return jobs


@functools.lru_cache(maxsize=4)
def vae_programs(vae_cfg):
    """Jitted (params, video) -> latents and (params, latents) -> video for one VAE config, compiled once a
    process. The VAE params are arguments, not closed-over constants: the compiled programs stay small and
    a persistent compilation cache (JAX_COMPILATION_CACHE_DIR) can reuse them across checkpoints."""
    import jax

    from omnihuman_jax.models.vae import decode_latents, encode_video

    # encode: (params, (1, F, H, W, 3)) -> (1, T, h, w, C); decode: the inverse shapes
    encode = jax.jit(functools.partial(encode_video, vae_cfg))
    decode = jax.jit(functools.partial(decode_latents, vae_cfg))
    return encode, decode


def run(job: Job, programs: dict | None = None) -> None:
    """The compute: features, reference latent, segments, decode, write.

    `programs`: a dict shared by the jobs of one `--jobs` run, holding the placed params and the jitted
    guided velocity per (checkpoint, mode), so later videos reuse them.
    """
    import jax
    import jax.numpy as jnp
    from tqdm import tqdm

    from data_pipeline.heatmaps import mouth_mask, render_heatmaps
    from omnihuman_jax.guidance import guidance_mode, make_guided_velocity
    from omnihuman_jax.long_video import SamplerSettings, SegmentSampler, covered_frames, generate_long_video
    from omnihuman_jax.models.dit import OmniHumanDiT
    from omnihuman_jax.sharding import make_mesh, replicated
    from omnihuman_jax.vae_train_step import frames_from_unit_range, frames_to_unit_range

    args, dit, plan = job.args, job.dit, job.plan
    vae_cfg, vae_params = job.vae_cfg, job.vae_params
    encode_jit, decode_jit = vae_programs(vae_cfg)
    encode = lambda x: encode_jit(vae_params, x)  # noqa: E731
    decode = lambda z: decode_jit(vae_params, z)  # noqa: E731
    to_unit = lambda frames: frames_to_unit_range(jnp.asarray(frames)[None])  # noqa: E731

    ref_latents = np.asarray(encode(to_unit(job.image[None])))  # (1, 1, h, w, C)
    audio = job.frontend(job.waveform, covered_frames(plan), args.fps)  # (N, L, D)
    text_emb, text_mask = text_inputs(job)
    h, w = ref_latents.shape[2:4]
    hs, ws = h * dit.pose_heatmap_scale, w * dit.pose_heatmap_scale

    def segment_conditions(seg) -> dict[str, np.ndarray]:
        sl = seg.frame_slice()
        if job.keypoints is not None:
            pose = render_heatmaps(job.keypoints[sl], hs, ws)[None]  # (1, F, hs, ws, 21)
        else:
            pose = np.zeros((1, seg.num_frames, hs, ws, dit.pose_channels), np.float32)
        cond = dict(
            ref_latents=ref_latents,
            text_emb=text_emb,
            text_mask=text_mask,
            audio_feats=audio[sl][None],
            pose_heatmaps=pose,
        )
        if dit.guidance_embeds:
            cond["guidance"] = np.zeros((1,), np.float32)
        if dit.audio_gate:  # the mouth region from the keypoints, in every mode (validate() requires them)
            cond["audio_region"] = mouth_mask(job.keypoints[sl], h, w)[None]  # (1, T, h, w)
        return cond

    programs = {} if programs is None else programs
    gmode = guidance_mode(job.mode, pose_guidance=args.cfg_pose != 1.0)
    key = (str(Path(args.checkpoint).resolve()), args.use_ema, gmode)  # the params validate() loaded once
    if key not in programs:
        mesh, params = None, job.params
        if jax.device_count() > 1:
            mesh = make_mesh(dict(data=-1, fsdp=1, tensor=1))
            params = jax.device_put(params, replicated(mesh))
        programs[key] = (params, make_guided_velocity(OmniHumanDiT(dit), gmode, mesh))
    params, velocity = programs[key]
    settings = SamplerSettings(
        args.steps,
        job.shift,
        args.solver,
        args.cfg_text,
        args.cfg_audio,
        args.cfg_schedule,
        args.cfg_floor,
        args.seed,
        args.cfg_pose,
    )
    bar = tqdm(total=len(plan) * args.steps, unit="step", desc=f"segment 1/{len(plan)}")
    sampler = SegmentSampler(
        OmniHumanDiT(dit),
        params,
        gmode,
        settings,
        dit.latent_channels,
        on_step=lambda i: bar.update(1),
        velocity=velocity,
    )

    def decode_frames(latents) -> np.ndarray:
        return frames_from_unit_range(decode(latents)[0])  # (F, H, W, 3) uint8

    def encode_motion(frames: np.ndarray, seg) -> jax.Array:
        bar.set_description(f"segment {seg.index + 2}/{len(plan)}")
        return encode(to_unit(frames))  # (1, 2, h, w, C)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = VideoWriter(out, args.fps, job.image.shape[:2], job.mux_audio)
    sheet = ContactSheet(job.total_frames, args.contact_frames)
    try:
        for seg, frames in generate_long_video(
            plan, segment_conditions, sampler, decode_frames, encode_motion
        ):
            writer.write(frames, last=seg.index == len(plan) - 1)
            sheet.add(seg.start + seg.emit_from, frames)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    writer.close()
    sheet.save(contact_sheet_path(out))
    print(f"wrote {out} ({writer.frames_written} frames at {args.fps} fps) and {contact_sheet_path(out)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    loaded, jobs = {}, []
    try:
        for i, job_args in enumerate(read_jobs(args), 1):
            try:
                jobs.append(validate(job_args, loaded))
            except SampleError as e:
                raise SampleError(f"--jobs line {i} ({job_args.out}): {e}" if args.jobs else str(e)) from e
    except SampleError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    programs: dict = {}
    for job in jobs:
        run(job, programs)
    return 0


if __name__ == "__main__":
    xla_env.apply()
    sys.exit(main())
