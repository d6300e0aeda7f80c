"""The sampler's inputs, checked before any compute (launch/sample.py runs the compute on them).

`validate(args)` checks files, media, the checkpoint against its config, the VAE and the audio/text
frontends, and loads them (IO only) into a `Job`; a bad input raises `SampleError` with a message that
names it and what to do.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from launch.sample_output import contact_sheet_path


class SampleError(Exception):
    """A bad input, found before any compute."""


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
    if dit.audio_gate:
        out["audio_region"] = jnp.zeros((1, t, h, w))
    return out


def validate(args: argparse.Namespace, loaded: dict | None = None) -> Job:
    """Every check that needs no compute: files, media, checkpoint vs config, VAE, frontends.

    `loaded`: a dict shared by the jobs of one `--jobs` run, so each checkpoint and VAE is read once.
    """
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
    loaded = {} if loaded is None else loaded
    try:
        config = ml_collections.ConfigDict(load_run_config(args.checkpoint))
        dit = DiTConfig.from_config(config.model)
        dit.validate()
        which = "ema" if args.use_ema else "params"
        key = ("checkpoint", str(Path(args.checkpoint).resolve()), which)
        if key not in loaded:
            loaded[key] = load_params(args.checkpoint, which)
        params, step = loaded[key]
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
    if dit.audio_gate and dit.use_audio and not args.pose:
        raise SampleError(
            "this checkpoint confines audio to the mouth region (model.audio_gate): pass --pose KEYPOINTS "
            "with the face landmarks of every output frame (in --mode audio only the mouth region is used)"
        )
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
        vae_path = _need_model_dir(vae_dir, "--vae")
        key = ("vae", str(vae_path.resolve()))
        if key not in loaded:
            loaded[key] = load_vae(vae_path)
        vae_cfg, vae_params = loaded[key]
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
