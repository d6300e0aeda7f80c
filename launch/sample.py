"""Generate a talking / moving human video from a reference image and audio (OmniHuman-1 section 3.4).

  python -m launch.sample --checkpoint runs/s2 --image ref.png --audio speech.wav --out out.mp4

The audio's length sets the video length (round(duration * fps) frames), generated in segments joined by
5 motion frames (omnihuman_jax.long_video) with batched multi-condition CFG and CFG annealing
(omnihuman_jax.guidance). The image is fitted to its nearest aspect-ratio bucket and the video keeps that
ratio. Audio, text and pose go through the data pipeline's own featurization code, so they match what the
checkpoint was trained on. Every input is checked before any compute: a bad one exits with status 2 and a
message on stderr. Writes OUT (mp4 with the input audio as AAC) and OUT's stem + `_contact.png`.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np

from launch.sample_inputs import Job, SampleError, validate
from launch.sample_output import ContactSheet, VideoWriter, contact_sheet_path
from omnihuman_jax import xla_env


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.sample", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--image", required=True, help="Reference image (PNG/JPEG, any aspect ratio).")
    a("--audio", required=True, help="Driving audio: wav/flac/mp3, or a video whose audio track is used.")
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
    a("--out", required=True, help="Output .mp4 path.")
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


def run(job: Job) -> None:
    """The compute: features, reference latent, segments, decode, write."""
    import jax
    import jax.numpy as jnp
    from tqdm import tqdm

    from data_pipeline.heatmaps import mouth_mask, render_heatmaps
    from omnihuman_jax.guidance import guidance_mode
    from omnihuman_jax.long_video import SamplerSettings, SegmentSampler, covered_frames, generate_long_video
    from omnihuman_jax.models.dit import OmniHumanDiT
    from omnihuman_jax.models.vae import decode_latents, encode_video
    from omnihuman_jax.sharding import make_mesh, replicated
    from omnihuman_jax.vae_train_step import frames_from_unit_range, frames_to_unit_range

    args, dit, plan = job.args, job.dit, job.plan
    vae_cfg, vae_params = job.vae_cfg, job.vae_params
    # The VAE params are arguments, not closed-over constants: the compiled programs stay small and a
    # persistent compilation cache (JAX_COMPILATION_CACHE_DIR) can reuse them across checkpoints.
    encode_jit = jax.jit(functools.partial(encode_video, vae_cfg))
    decode_jit = jax.jit(functools.partial(decode_latents, vae_cfg))
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

    mesh, params = None, job.params
    if jax.device_count() > 1:
        mesh = make_mesh(dict(data=-1, fsdp=1, tensor=1))
        params = jax.device_put(params, replicated(mesh))
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
        guidance_mode(job.mode, pose_guidance=args.cfg_pose != 1.0),
        settings,
        dit.latent_channels,
        mesh=mesh,
        on_step=lambda i: bar.update(1),
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
    try:
        job = validate(args)
    except SampleError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    run(job)
    return 0


if __name__ == "__main__":
    xla_env.apply()
    sys.exit(main())
