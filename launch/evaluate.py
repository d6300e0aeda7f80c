"""Evaluate generated toy-world videos against the held-out clips that drove them (OmniHuman-1 section 4.1).

  python -m launch.evaluate --world runs/toyworld/world --videos runs/toyworld/samples [--json out.json]

For each `<clip_id>.mp4` in --videos whose clip exists in the world (`clips/<clip_id>.truth.npz`), the
stand-ins of the paper's metrics (`data_pipeline.toyworld.measure`) are read from pixels:
- sync: Pearson correlation between the measured mouth opening and the envelope of the driving audio
  (best lag within +/- 2 frames; Sync-C's role);
- pose_err_px: hand-centre error in pixels against the driving keypoints (HKC's role), over the frames
  where a hand is seen;
- hands_found: the share of (frame, hand) pairs with confident keypoints where the hand is seen at all;
- psnr / ssim: identity, on the clip's static region against the reference frame;
- motion_px: mean frame-to-frame hand displacement (HKV's role).
`--truth` scores the ground-truth mp4s of the same clips instead, the evaluator's own calibration.
`--swap_audio` also scores each video's sync against another clip's audio: the chance level of `sync` for
those videos, which is above 0 because the best lag is taken.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from data_pipeline.toyworld import measure, render, speech

METRICS = ("sync", "pose_err_px", "hands_found", "psnr", "ssim", "motion_px")
OPTIONAL_METRICS = ("sync_swapped",)  # averaged only when the clips carry it (`evaluate_videos(swap_audio=)`)


def load_truth(world: Path, clip_id: str) -> dict[str, np.ndarray]:
    path = world / "clips" / f"{clip_id}.truth.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ground truth for clip {clip_id!r}; is --world the right folder?")
    with np.load(path, allow_pickle=False) as z:
        truth = {k: z[k] for k in z.files}
    truth["keypoints"] = np.load(world / "clips" / f"{clip_id}.kp.npy", allow_pickle=False)
    return truth


def score_frames(frames: np.ndarray, truth: dict[str, np.ndarray], fps: float) -> dict[str, float]:
    """All metrics of one video (F, H, W, 3) uint8 against its clip's truth; frames past the truth are cut."""
    n = min(frames.shape[0], truth["keypoints"].shape[0])
    frames = frames[:n]
    h, w = truth["reference_frame"].shape[:2]
    if frames.shape[1:3] != (h, w):
        raise ValueError(f"video is {frames.shape[1:3]}, the clip {h}x{w}; sample at the clip's size")
    wav = speech.pcm16_to_float(truth["driving_audio"])
    out = {
        "sync": measure.sync_score(frames, wav, speech.SAMPLE_RATE, fps),
        "pose_err_px": measure.pose_error_px(frames, truth["keypoints"][:n]),
        "hands_found": measure.hands_found_fraction(frames, truth["keypoints"][:n]),
        "motion_px": measure.motion_amplitude(frames),
    }
    mask = truth["static_mask"]
    if mask.any():
        out["psnr"], out["ssim"] = measure.static_region_psnr_ssim(frames, truth["reference_frame"], mask)
    else:  # a moving camera leaves no static region
        out["psnr"] = out["ssim"] = float("nan")
    return out


def evaluate_videos(
    world: Path, videos: dict[str, Path], fps: float, swap_audio: bool = False
) -> dict[str, dict[str, float]]:
    """clip_id -> metrics, for mp4 files named by the clip they were driven by (each read once).

    swap_audio: also `sync_swapped`, each video's sync against the driving audio of the next clip (sorted,
    cyclic): the chance level of `sync` for these very videos, which the best-of-lags correlation lifts
    above 0 for a mouth and an audio that have nothing to do with each other. Needs 2 or more videos.
    """
    ids = sorted(videos)
    if swap_audio and len(ids) < 2:
        raise ValueError(f"sync against another clip's audio needs at least 2 videos, got {len(ids)}")
    truths = {cid: load_truth(world, cid) for cid in ids}
    next_clip = {cid: ids[(i + 1) % len(ids)] for i, cid in enumerate(ids)}
    out = {}
    for cid, path in videos.items():
        frames = render.read_mp4(path)  # (F, H, W, 3)
        out[cid] = score_frames(frames, truths[cid], fps)
        if swap_audio:
            out[cid]["sync_swapped"] = swapped_sync(frames, truths[next_clip[cid]], fps)
    return out


def swapped_sync(frames: np.ndarray, other: dict[str, np.ndarray], fps: float) -> float:
    """Sync of a video (F, H, W, 3) against another clip's driving audio (`other`, its `load_truth`)."""
    n = min(frames.shape[0], other["keypoints"].shape[0])  # no silence past the other clip's end
    wav = speech.pcm16_to_float(other["driving_audio"])
    return measure.sync_score(frames[:n], wav, speech.SAMPLE_RATE, fps)


def find_videos(folder: Path, world: Path) -> dict[str, Path]:
    """`<clip_id>.mp4` files in `folder` whose clip has ground truth in the world (others are ignored)."""
    out = {
        p.stem: p for p in sorted(folder.glob("*.mp4")) if (world / "clips" / f"{p.stem}.truth.npz").is_file()
    }
    if not out:
        raise FileNotFoundError(f"{folder}: no <clip_id>.mp4 named after a clip of {world}")
    return out


def eval_clip_ids(world: Path, split: str = "eval") -> list[str]:
    """Clip ids of one manifest split (the held-out identities by default)."""
    lines = (world / "manifest.jsonl").read_text().splitlines()
    return [e["clip_id"] for e in map(json.loads, lines) if e.get("split", "train") == split]


def summarize(per_clip: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over clips, NaNs skipped (NaN when no clip has it; an optional metric no clip
    carries is left out)."""
    out = {}
    carried = [m for m in OPTIONAL_METRICS if any(m in v for v in per_clip.values())]
    for m in (*METRICS, *carried):
        vals = [v[m] for v in per_clip.values() if m in v and math.isfinite(v[m])]
        out[m] = float(np.mean(vals)) if vals else float("nan")
    out["clips"] = len(per_clip)
    return out


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per named result, one column per metric."""
    head = "| run | clips | sync | pose err (px) | hands found | PSNR (dB) | SSIM | motion (px/frame) |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for name, s in rows.items():
        lines.append(
            f"| {name} | {s['clips']} | {s['sync']:.3f} | {s['pose_err_px']:.2f} | "
            f"{s.get('hands_found', float('nan')):.2f} | {s['psnr']:.2f} | "
            f"{s['ssim']:.3f} | {s['motion_px']:.3f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--world", required=True, help="toy-world folder (manifest.jsonl, clips/*.truth.npz)")
    p.add_argument("--videos", help="folder of generated <clip_id>.mp4 files to score")
    p.add_argument("--truth", action="store_true", help="score the world's own mp4s of --split instead")
    p.add_argument("--split", default="eval", help="manifest split scored with --truth (default: eval)")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate of the videos (default: 25)")
    p.add_argument(
        "--swap_audio",
        action="store_true",
        help="also score each video's sync against the next clip's audio: the chance level (2+ videos)",
    )
    p.add_argument("--json", help="also write per-clip and mean metrics to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    world = Path(args.world)
    try:
        if args.truth:
            videos = {cid: world / "clips" / f"{cid}.mp4" for cid in eval_clip_ids(world, args.split)}
            if not videos:
                raise FileNotFoundError(f"{world}/manifest.jsonl has no clip of split {args.split!r}")
        elif args.videos:
            videos = find_videos(Path(args.videos), world)
        else:
            raise ValueError("give --videos DIR (generated mp4s) or --truth (the world's own clips)")
        per_clip = evaluate_videos(world, videos, args.fps, swap_audio=args.swap_audio)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = summarize(per_clip)
    print(format_table({"truth" if args.truth else "generated": summary}))
    if "sync_swapped" in summary:
        print(f"sync against another clip's audio (chance level): {summary['sync_swapped']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"per_clip": per_clip, "mean": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
