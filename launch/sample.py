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
import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from launch.sample_output import ContactSheet, VideoWriter, contact_sheet_path
from omnihuman_jax import xla_env


class SampleError(Exception):
    """A bad input, found before any compute."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.sample", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--image", required=True, help="Reference image (PNG/JPEG, any aspect ratio).")
    a("--audio", required=True, help="Driving audio: wav/flac/mp3, or a video whose audio track is used.")
    a(
        "--pose",
        help="Optional keypoints (.npy (F, 133, 3) or .json), pixels of --image, one per output frame.",
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


@dataclasses.dataclass
class Job:
    """Everything validated, loaded (IO only) and ready to compute."""

    args: argparse.Namespace
    config: Any
    dit: Any
    params: Any
    vae_cfg: Any
    vae_params: Any
    image: np.ndarray  # (H, W, 3) uint8, bucketed
    crop: Any
    waveform: np.ndarray  # (S,) 16 kHz mono, for features
    mux_audio: tuple[np.ndarray, int]  # (C, S) float32 at its own rate, for the mp4
    total_frames: int
    plan: list
    keypoints: np.ndarray | None  # (N, 133, 3) bucket-normalised, N >= covered frames
    frontend: Any
    mode: str
    shift: float


def _need_file(path: str | None, what: str) -> Path:
    if not path or not Path(path).is_file():
        raise SampleError(f"{what} {path!r} does not exist or is not a file")
    return Path(path)


def _need_model_dir(path: str, what: str) -> Path:
    if not (Path(path) / "config.json").is_file():
        raise SampleError(f"{what} {path!r} is not a model folder with a config.json")
    return Path(path)


def load_image(path: Path, pixel_budget: int) -> tuple[np.ndarray, Any]:
    """Image -> (bucketed (H, W, 3) uint8, CropTransform): resized to cover its bucket, centre-cropped."""
    from PIL import Image, UnidentifiedImageError

    from data_pipeline.buckets import bucket_table, nearest_bucket
    from data_pipeline.media import crop_transform

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise SampleError(f"--image {path}: cannot read it as an image ({e}); give a PNG or JPEG") from e
    table = bucket_table(pixel_budget)
    h, w = table[nearest_bucket(rgb.height, rgb.width, table)]
    crop = crop_transform(rgb.height, rgb.width, h, w)
    rh, rw = round(rgb.height * crop.scale_y), round(rgb.width * crop.scale_x)
    resized = np.asarray(rgb.resize((rw, rh), Image.Resampling.LANCZOS))  # (rh, rw, 3)
    return np.ascontiguousarray(
        resized[crop.offset_y : crop.offset_y + h, crop.offset_x : crop.offset_x + w]
    ), crop


def read_mux_audio(path: Path) -> tuple[np.ndarray, int]:
    """The input audio for muxing at its own rate: (C, S) float32 with C = 1 or 2 (more channels -> mono)."""
    import av
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (S, C)
        data = data.T
    except (RuntimeError, OSError, soundfile.LibsndfileError):
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            resampler = av.AudioResampler(format="fltp")
            chunks = [p.to_ndarray() for f in container.decode(stream) for p in resampler.resample(f)]
        data = np.concatenate(chunks, axis=1).astype(np.float32)  # (C, S)
    if data.shape[0] > 2:
        data = data.mean(axis=0, keepdims=True)
    return np.ascontiguousarray(data), int(rate)


def _frontend(args, m) -> Any:
    """The audio frontend, checked against the checkpoint's (audio_layers, audio_dim) before loading."""
    from data_pipeline.audio_features import LogMelFrontend, Wav2Vec2Frontend

    want = (int(m.audio_layers), int(m.audio_dim))
    kind = args.audio_frontend or ("wav2vec2" if args.wav2vec else "logmel")
    if kind == "logmel":
        got = (args.mel_groups or want[0], args.mel_bins or want[1])
        if got != want:
            raise SampleError(
                f"log-mel features would be (groups, bins) = {got} but the checkpoint was trained on "
                f"(model.audio_layers, model.audio_dim) = {want}; use the frontend it was trained with"
            )
        return LogMelFrontend(n_mels=got[1], groups=got[0])
    if not args.wav2vec:
        raise SampleError("--audio_frontend wav2vec2 needs --wav2vec DIR (a local Wav2Vec2Model folder)")
    cfg = json.loads((_need_model_dir(args.wav2vec, "--wav2vec") / "config.json").read_text())
    layers = tuple(int(i) for i in args.wav2vec_layers.split(",")) if args.wav2vec_layers else None
    got = (len(layers) if layers else int(cfg["num_hidden_layers"]) + 1, int(cfg["hidden_size"]))
    if got != want:
        raise SampleError(
            f"wav2vec2 features from {args.wav2vec} would be (layers, dim) = {got} but the checkpoint was "
            f"trained on (model.audio_layers, model.audio_dim) = {want}; pick --wav2vec_layers or the "
            "frontend it was trained with (a log-mel checkpoint needs --audio_frontend logmel)"
        )
    return Wav2Vec2Frontend(args.wav2vec, layers)


def check_params(dit, params: Any, plan, hw: tuple[int, int], text_len: int) -> None:
    """Raises SampleError when the checkpoint's param tree or shapes differ from the config's model."""
    import flax.linen as nn
    import jax

    from omnihuman_jax.models.dit import OmniHumanDiT

    dummy = segment_inputs_shapes(dit, plan[0].latent_frames, plan[0].num_frames, hw, text_len)
    abstract = nn.unbox(
        jax.eval_shape(OmniHumanDiT(dit).init, jax.random.key(0), dummy, dummy["t"])["params"]
    )
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    got = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    shapes = [
        f"{k}: {got[k]} vs {want[k]}" for k in sorted(set(want) & set(got)) if tuple(got[k]) != tuple(want[k])
    ]
    if missing or extra or shapes:
        raise SampleError(
            f"the checkpoint's params do not match its model config (missing {missing[:4]}, unexpected "
            f"{extra[:4]}, shapes (checkpoint vs config) {shapes[:4]}); was it written with this config?"
        )


def segment_inputs_shapes(dit, t: int, f: int, hw: tuple[int, int], text_len: int) -> dict:
    """Zero single-sample model inputs of one segment (for shape checks)."""
    import jax.numpy as jnp

    h, w, c, s = hw[0], hw[1], dit.latent_channels, dit.pose_heatmap_scale
    out = dict(
        noisy_latents=jnp.zeros((1, t, h, w, c)),
        motion_latents=jnp.zeros((1, t, h, w, c)),
        ref_latents=jnp.zeros((1, 1, h, w, c)),
        text_emb=jnp.zeros((1, text_len, dit.text_dim)),
        text_mask=jnp.ones((1, text_len), bool),
        audio_feats=jnp.zeros((1, f, dit.audio_layers, dit.audio_dim)),
        pose_heatmaps=jnp.zeros((1, f, h * s, w * s, dit.pose_channels)),
        motion_mask=jnp.zeros((1, t), bool),
        condition_mask=jnp.ones((1, 5), bool),
        t=jnp.zeros((1,)),
    )
    if dit.guidance_embeds:
        out["guidance"] = jnp.zeros((1,))
    return out


def validate(args: argparse.Namespace) -> Job:
    """Every check that needs no compute: files, media, checkpoint vs config, VAE, frontends."""
    import ml_collections

    from data_pipeline.media import MediaError, decode_audio, load_keypoints
    from omnihuman_jax.checkpointing import CheckpointError, load_params, load_run_config
    from omnihuman_jax.flow_matching import resolution_shift
    from omnihuman_jax.interop.diffusers_vae import load_vae
    from omnihuman_jax.long_video import covered_frames, plan_segments
    from omnihuman_jax.models.dit import DiTConfig

    out = Path(args.out)
    contact = contact_sheet_path(out)
    if out.suffix.lower() != ".mp4":
        raise SampleError(f"--out {out}: give a .mp4 path")
    for path in (out, contact):
        if path.exists() and not args.overwrite:
            raise SampleError(f"{path} exists; pass --overwrite to replace it")
    image_path, audio_path = _need_file(args.image, "--image"), _need_file(args.audio, "--audio")
    if args.fps <= 0 or args.steps < 1 or (args.shift is not None and args.shift <= 0):
        raise SampleError(f"--fps ({args.fps}) and --shift must be positive and --steps ({args.steps}) >= 1")
    if not Path(args.checkpoint).exists():
        raise SampleError(f"--checkpoint {args.checkpoint!r} does not exist")
    try:
        config = ml_collections.ConfigDict(load_run_config(args.checkpoint))
        dit = DiTConfig.from_config(config.model)
        dit.validate()
        params, step = load_params(args.checkpoint, "ema" if args.use_ema else "params")
    except (CheckpointError, FileNotFoundError, ValueError, KeyError) as e:
        raise SampleError(f"--checkpoint {args.checkpoint}: {e}") from e
    if dit.pooled_text_dim:
        raise SampleError(
            "model.pooled_text_dim > 0: the data pipeline's text features have no pooled vector"
        )
    mode = args.mode if args.mode != "auto" else ("combined" if args.pose else "audio")
    if args.cfg_pose != 1.0 and mode != "pose":
        raise SampleError(f"--cfg_pose {args.cfg_pose} applies to --mode=pose only (this run's mode: {mode})")
    if mode in ("pose", "combined") and not args.pose:
        raise SampleError(f"--mode {mode} needs --pose")
    if args.prompt and not args.text_encoder:
        raise SampleError("--prompt needs --text_encoder DIR (the encoder the training data was built with)")
    if args.text_encoder:
        tcfg = json.loads((_need_model_dir(args.text_encoder, "--text_encoder") / "config.json").read_text())
        width = tcfg.get("hidden_size") or tcfg.get("d_model")
        if width != dit.text_dim:
            raise SampleError(
                f"--text_encoder width {width} != the checkpoint's model.text_dim={dit.text_dim}"
            )

    vae_dir = args.vae or str(config.get("vae", {}).get("path", ""))
    if not vae_dir:
        raise SampleError("no VAE: pass --vae DIR (the run config has no vae.path)")
    try:
        vae_cfg, vae_params = load_vae(_need_model_dir(vae_dir, "--vae"))
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise SampleError(f"--vae {vae_dir}: {e}") from e
    want_ratio = int(config.get("vae", {}).get("spatial_compression_ratio", 8))
    r = vae_cfg.spatial_compression_ratio
    if vae_cfg.latent_channels != dit.latent_channels or r != want_ratio:
        raise SampleError(
            f"--vae {vae_dir} has latent_channels={vae_cfg.latent_channels} and {r}x spatial "
            f"compression; the checkpoint needs model.latent_channels={dit.latent_channels} and "
            f"{want_ratio}x (vae.spatial_compression_ratio: the VAE it was trained with)"
        )

    shape = config.shape
    budget = args.pixel_budget or (r * shape.latent_height) * (r * shape.latent_width)
    try:
        image, crop = load_image(image_path, budget)
    except ValueError as e:
        raise SampleError(f"--pixel_budget {budget}: {e}") from e
    try:
        waveform = decode_audio(audio_path)
        mux = read_mux_audio(audio_path)
    except MediaError as e:
        raise SampleError(f"--audio: {e}") from e
    except Exception as e:  # PyAV / soundfile raise many kinds for non-audio input
        raise SampleError(f"--audio {audio_path}: not readable audio ({type(e).__name__}: {e})") from e
    total = round(waveform.shape[0] / 16000 * args.fps)
    if total < 1:
        raise SampleError(f"--audio {audio_path} is shorter than one frame at {args.fps} fps")
    segment_frames = args.segment_frames or 1 + 4 * (int(shape.latent_frames) - 1)
    try:
        plan = plan_segments(total, segment_frames)
    except ValueError as e:
        raise SampleError(f"--segment_frames: {e}") from e

    keypoints = None
    if args.pose:
        try:
            kp = load_keypoints(_need_file(args.pose, "--pose"))
        except MediaError as e:
            raise SampleError(f"--pose: {e}") from e
        if abs(kp.shape[0] - total) > 1:
            raise SampleError(
                f"--pose {args.pose} has {kp.shape[0]} frames but the audio gives {total} frames at "
                f"{args.fps} fps; give one keypoint set per output frame"
            )
        kp = crop.normalize_keypoints(kp)
        n = covered_frames(plan)
        keypoints = kp[np.minimum(np.arange(n), kp.shape[0] - 1)]  # (N, 133, 3), last repeated

    hw = (image.shape[0] // r, image.shape[1] // r)
    if image.shape[0] % (r * dit.patch_size) or image.shape[1] % (r * dit.patch_size):
        raise SampleError(f"bucket {image.shape[:2]} is not divisible by {r} x patch {dit.patch_size}")
    check_params(dit, params, plan, hw, int(shape.text_len))
    frontend = _frontend(args, config.model)
    tokens = plan[0].latent_frames * (hw[0] // dit.patch_size) * (hw[1] // dit.patch_size)
    shift = args.shift or resolution_shift(
        tokens, float(config.flow.shift), int(config.flow.base_shift_tokens)
    )
    print(
        f"checkpoint step {step}; {total} frames in {len(plan)} segment(s) at "
        f"{image.shape[1]}x{image.shape[0]}"
    )
    return Job(
        args,
        config,
        dit,
        params,
        vae_cfg,
        vae_params,
        image,
        crop,
        waveform,
        mux,
        total,
        plan,
        keypoints,
        frontend,
        mode,
        float(shift),
    )


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

    from data_pipeline.heatmaps import render_heatmaps
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
