"""Does a trained causal video VAE use its later latent frames? A swap probe of the temporal path.

  python -m launch.probe_vae --vae=runs/proof/vae --clips=runs/proof/world/clips [--frames=5]

HunyuanVideo's causal VAE (OmniHuman-1 section 3) codes frame 0 alone and each later group of 4 frames
in one latent frame. A VAE can reconstruct single frames well and still ignore those later latents,
drawing frame 0 (or an average frame) for the whole clip; lip sync and hand motion are then lost before
the diffusion model sees them. For each pair of clips (A, B) this builds the clip [A_0, B_1 .. B_k],
round-trips it, and measures the reconstruction of frames 1..k against B's frames (what a working
temporal path gives back) and against A_0 (what a VAE that ignores later latents gives back):

- `err_to_later`: mean absolute error (0-255) of reconstructed frames 1..k to B_1..B_k;
- `err_to_first`: the same against A_0 repeated;
- `motion_kept`: mean |frame-to-frame change| of the reconstruction of B's own clip over that of B, 1.0
  when motion survives the round trip, 0.0 when the reconstruction is a still image.

`--mouth --world=W` probes the same temporal path on the toy world's mouth instead, over W's held-out
clips (`clips/*.truth.npz`): a 4x causal VAE keeps one latent frame per 4 video frames, and the lips can
open and close within those 160 ms at 25 fps. Per clip it measures the mouth opening
(`data_pipeline.toyworld.measure`) of the clip, of its round trip as one clip, and of the round trip of
each frame alone (the first-frame path: spatial coding only), and reports means over the clips:

- `sync_truth`, `sync_clip`, `sync_frames`: lip sync (`measure.sync_score`) of each;
- `sync_group_means`: lip sync of the clip's own opening with frame 0 kept and each later 4-frame group
  replaced by its mean, which is what a VAE that keeps one mouth per latent frame can give back at best;
- `mouth_detail_kept`: the opening's spread within the 4-frame groups after the clip round trip over the
  clip's own (1.0: every frame's mouth survives; 0.0: one mouth per latent frame).

`--mouth --world=W --samples=DIR` (no --vae) scores generated videos instead, `DIR/<clip_id>.mp4` driven by
W's clips: `sync`, the sync of their own group means (`sync_group_means`: equal to `sync` when a model draws
one mouth per latent frame), the truth's (`sync_truth_group_means`) and `mouth_detail_kept` against the truth.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from omnihuman_jax import xla_env

GROUP = 4  # video frames per latent frame after the first (HunyuanVideo's 4x causal VAE)
RoundTrip = Callable[[np.ndarray], np.ndarray]  # uint8 (B, F, H, W, 3) -> uint8 (B, F, H, W, 3)


def motion_kept(recon: np.ndarray, truth: np.ndarray) -> float:
    """Mean |temporal difference| of `recon` over that of `truth` (both (..., F, H, W, C))."""
    want = np.abs(np.diff(truth.astype(np.float64), axis=-4)).mean()
    if want == 0:
        raise ValueError("motion_kept: the clips are still images; pick clips that move")
    return float(np.abs(np.diff(recon.astype(np.float64), axis=-4)).mean() / want)


def swap_probe(roundtrip: RoundTrip, clips: np.ndarray) -> dict[str, float]:
    """clips: uint8 (N, F, H, W, 3), N >= 2, F = 1 + 4k. Clip i's later frames go after clip i-1's first."""
    clips = np.asarray(clips)
    if clips.ndim != 5 or clips.shape[0] < 2 or clips.shape[1] < 2:
        raise ValueError(f"swap_probe needs (N >= 2, F >= 2, H, W, 3) clips, got {clips.shape}")
    first = np.roll(clips[:, :1], 1, axis=0)  # (N, 1, H, W, 3): A_0 of the previous clip
    swapped = np.concatenate([first, clips[:, 1:]], axis=1)  # (N, F, H, W, 3)
    recon = roundtrip(swapped)[:, 1:].astype(np.float64)  # (N, F - 1, H, W, 3)
    own = roundtrip(clips)
    return {
        "err_to_later": float(np.abs(recon - clips[:, 1:]).mean()),
        "err_to_first": float(np.abs(recon - first).mean()),
        "motion_kept": motion_kept(own, clips),
    }


def vae_roundtrip(vae_dir: Path) -> RoundTrip:
    """The exported VAE's encode (posterior mean) then decode, on uint8 frames."""
    from omnihuman_jax.interop.diffusers_vae import load_vae
    from omnihuman_jax.models.vae import decode_latents, encode_video
    from omnihuman_jax.vae_train_step import frames_from_unit_range, frames_to_unit_range

    cfg, params = load_vae(vae_dir)

    def roundtrip(frames: np.ndarray) -> np.ndarray:
        latents = encode_video(cfg, params, frames_to_unit_range(frames))
        return frames_from_unit_range(decode_latents(cfg, params, latents))

    return roundtrip


def load_clips(folder: Path, frames: int, limit: int) -> np.ndarray:
    """The first `frames` frames of up to `limit` mp4 files of `folder` (sorted), as (N, F, H, W, 3)."""
    from data_pipeline.toyworld import render

    paths = sorted(folder.glob("*.mp4"))[:limit]
    if len(paths) < 2:
        raise FileNotFoundError(f"{folder}: the probe needs at least 2 mp4 clips, found {len(paths)}")
    clips = [render.read_mp4(p)[:frames] for p in paths]
    short = [p.name for p, c in zip(paths, clips, strict=True) if c.shape[0] < frames]
    if short:
        raise ValueError(f"clips shorter than --frames={frames}: {', '.join(short)}")
    return np.stack(clips)


def group_means(series: np.ndarray, group: int = GROUP) -> np.ndarray:
    """(F,) per-frame values -> (F,): frame 0 kept, each later group of `group` frames (the video frames
    of one causal latent frame; a short last group included) replaced by its mean."""
    out = np.asarray(series, np.float64).copy()
    for start in range(1, out.shape[0], group):
        out[start : start + group] = out[start : start + group].mean()
    return out


def within_group_spread(series: np.ndarray, group: int = GROUP) -> float:
    """Mean standard deviation of (F,) values within the groups of `group_means` (whole groups only)."""
    x = np.asarray(series, np.float64)
    whole = (x.shape[0] - 1) // group
    if whole < 1:
        raise ValueError(f"need at least 1 + {group} frames for one whole group, got {x.shape[0]}")
    return float(x[1 : 1 + whole * group].reshape(whole, group).std(axis=1).mean())


def detail_kept(opening: np.ndarray, true_opening: np.ndarray) -> float:
    """`within_group_spread` of an (F,) opening over the true opening's (0.0 when the truth does not move)."""
    spread = within_group_spread(true_opening)
    return within_group_spread(opening) / spread if spread else 0.0


def mouth_detail(
    truth: np.ndarray, clip_recon: np.ndarray, frame_recon: np.ndarray, wav: np.ndarray, sr: int, fps: float
) -> dict[str, float]:
    """The `--mouth` figures of one clip: uint8 (F, H, W, 3) frames, the clip round trip, each frame's."""
    from data_pipeline.toyworld import measure

    opening = measure.mouth_opening(truth)  # (F,) px
    envelope = measure.audio_envelope(wav, sr, fps, truth.shape[0])
    kept = detail_kept(measure.mouth_opening(clip_recon), opening)
    lag = measure.DEFAULT_MAX_LAG
    return {
        "sync_truth": measure.sync_score(truth, wav, sr, fps),
        "sync_clip": measure.sync_score(clip_recon, wav, sr, fps),
        "sync_frames": measure.sync_score(frame_recon, wav, sr, fps),
        "sync_group_means": measure.lagged_correlation(group_means(opening), envelope, lag)[0],
        "mouth_detail_kept": kept,
    }


def mouth_probe(roundtrip: RoundTrip, world: Path, limit: int) -> dict[str, float]:
    """Means of `mouth_detail` over up to `limit` held-out clips of a toy world (1 + 4k frames each)."""
    from data_pipeline.toyworld import render, speech
    from launch.evaluate import eval_clip_ids, load_truth

    if not (world / "manifest.jsonl").is_file():
        raise FileNotFoundError(f"{world}: no manifest.jsonl, so no held-out clips to probe (a toy world?)")
    ids = eval_clip_ids(world)[:limit]
    if not ids:
        raise FileNotFoundError(f"{world}: no held-out clips to probe; is --world a toy world folder?")
    rows = []
    for cid in ids:
        frames = render.read_mp4(world / "clips" / f"{cid}.mp4")  # (F, H, W, 3)
        frames = frames[: 1 + GROUP * ((frames.shape[0] - 1) // GROUP)]
        clip_recon = roundtrip(frames[None])[0]
        frame_recon = roundtrip(frames[:, None])[:, 0]  # each frame as a 1-frame clip
        wav = speech.pcm16_to_float(load_truth(world, cid)["driving_audio"])
        rows.append(mouth_detail(frames, clip_recon, frame_recon, wav, speech.SAMPLE_RATE, world_fps(world)))
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"clips": float(len(rows))}


def sample_mouth_detail(world: Path, samples: Path) -> dict[str, float]:
    """Means over the generated videos `samples/<clip_id>.mp4` of the mouth's figures against the clips."""
    from data_pipeline.toyworld import measure, render, speech
    from launch.evaluate import find_videos, load_truth

    videos = find_videos(samples, world)  # raises, naming the folder, when none matches a clip
    rows, lag, fps = [], measure.DEFAULT_MAX_LAG, world_fps(world)
    for cid, path in sorted(videos.items()):
        video, truth = render.read_mp4(path), render.read_mp4(world / "clips" / f"{cid}.mp4")
        n = min(video.shape[0], truth.shape[0])
        n = 1 + GROUP * ((n - 1) // GROUP)  # whole latent frames
        wav = speech.pcm16_to_float(load_truth(world, cid)["driving_audio"])
        envelope = measure.audio_envelope(wav, speech.SAMPLE_RATE, fps, n)
        made, true = measure.mouth_opening(video[:n]), measure.mouth_opening(truth[:n])  # (n,) px each
        rows.append({
            "sync": measure.lagged_correlation(made, envelope, lag)[0],
            "sync_group_means": measure.lagged_correlation(group_means(made), envelope, lag)[0],
            "sync_truth_group_means": measure.lagged_correlation(group_means(true), envelope, lag)[0],
            "mouth_detail_kept": detail_kept(made, true),
        })  # fmt: skip
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"clips": float(len(rows))}


def world_fps(world: Path) -> float:
    """The world's frame rate from its `toyworld.json` (25 fps when the file has none)."""
    meta = world / "toyworld.json"
    return float(json.loads(meta.read_text()).get("fps", 25.0)) if meta.is_file() else 25.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", type=Path, help="a VAE folder written by launch.train_vae (not with --samples)")
    p.add_argument("--clips", type=Path, help="a folder of mp4 clips (e.g. a world's clips/): the swap probe")
    p.add_argument("--mouth", action="store_true", help="probe the mouth's temporal detail instead (--world)")
    p.add_argument("--world", type=Path, help="with --mouth: a toy world folder; its held-out clips are used")
    p.add_argument("--samples", type=Path, help="with --mouth: score these generated <clip_id>.mp4 instead")
    p.add_argument("--frames", type=int, default=5, help="frames per probe clip, 1 + 4k (default 5)")
    p.add_argument("--limit", type=int, default=8, help="at most this many clips (default 8)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.mouth:
        if args.world is None:
            raise SystemExit("--mouth needs --world=DIR, a toy world folder (e.g. runs/p16/val_world)")
        if args.samples is not None:
            result = sample_mouth_detail(args.world, args.samples)
        elif args.vae is None:
            raise SystemExit("--mouth needs --vae=DIR (or --samples=DIR of generated videos)")
        else:
            result = mouth_probe(vae_roundtrip(args.vae), args.world, args.limit)
        print(json.dumps({k: round(v, 4) for k, v in result.items()}))
        return 0
    if args.clips is None or args.vae is None:
        raise SystemExit("--vae=DIR and --clips=DIR are required (or --mouth --world=DIR)")
    if args.frames < 5 or (args.frames - 1) % 4:
        raise SystemExit(f"--frames={args.frames} must be 1 + 4k with k >= 1 (5, 9, ...)")
    clips = load_clips(args.clips, args.frames, args.limit)
    result = swap_probe(vae_roundtrip(args.vae), clips)
    print(json.dumps({k: round(v, 4) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    xla_env.apply()
    raise SystemExit(main())
