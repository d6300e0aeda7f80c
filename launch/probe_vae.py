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
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from omnihuman_jax import xla_env

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", type=Path, required=True, help="a VAE folder written by launch.train_vae")
    p.add_argument("--clips", type=Path, required=True, help="a folder of mp4 clips (e.g. a world's clips/)")
    p.add_argument("--frames", type=int, default=5, help="frames per probe clip, 1 + 4k (default 5)")
    p.add_argument("--limit", type=int, default=8, help="at most this many clips (default 8)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.frames < 5 or (args.frames - 1) % 4:
        raise SystemExit(f"--frames={args.frames} must be 1 + 4k with k >= 1 (5, 9, ...)")
    clips = load_clips(args.clips, args.frames, args.limit)
    result = swap_probe(vae_roundtrip(args.vae), clips)
    print(json.dumps({k: round(v, 4) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    xla_env.apply()
    raise SystemExit(main())
