"""Generate a toy-world dataset: mp4 + wav + keypoints per clip, and a raw-clip manifest.

Writes what docs/design.md ("Raw-clip manifest") describes, so the toy world travels the real path
(featurization, TFDS, training, sampling, evaluation). Like the paper's data (OmniHuman-1 section 4.1:
13% of the data passes the lip-sync and pose-visibility filters), most clips fail a filter by default:
each clip's audio is clean with probability `--audio_clean_rate` (else shifted by 6-15 video frames or
swapped for another utterance) and its pose is clean with probability `--pose_clean_rate` (else both
hands leave the frame for 35-80% of it); 0.36 x 0.36 = 13% pass both.

Scores (manifest `scores`):
- `lipsync`: 10 x the best Pearson correlation (lags -2..2 frames) between the true mouth opening and
  the envelope of the written wav, floored at 0; passes at `LIPSYNC_THRESHOLD` = 5.0.
- `pose_visibility`: fraction of upper-body joints and hand keypoints with confidence >= 0.3; passes
  at `POSE_VISIBILITY_THRESHOLD` = 0.8.
- `aesthetics`: drawn uniformly in [4, 7] (not measured); `motion_amplitude`: mean frame-to-frame hand
  displacement in pixels, from the keypoints.

Output under `--out`: `manifest.jsonl`, `toyworld.json` (the settings), and per clip in `clips/`:
`<id>.mp4`, `<id>.wav`, `<id>.kp.npy` (F, 133, 3) float32 pixels, and `<id>.truth.npz` with the
uncompressed ground truth: `mouth_opening` (F,) px, `hand_centres` (F, 2, 2) px (person's left,
right), `camera` (F, 2), `static_mask` (H, W) pixels unchanged over the clip, `reference_frame`
(H, W, 3) uint8 (frame 0, before encoding), `driving_audio` (N,) int16 (the audio the mouth follows),
`mouth_lag_frames`, `mouth_width`, `hand_radius`, `audio_corruption`, `audio_shift_frames`,
`hands_dropped_fraction`. Output depends only on the arguments; identities N-E..N-1 are `split: eval`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from data_pipeline.toyworld import identity as identity_lib
from data_pipeline.toyworld import measure, motion, render, speech

LIPSYNC_THRESHOLD = 5.0  # lipsync score >= this passes the audio filter
POSE_VISIBILITY_THRESHOLD = 0.8  # pose_visibility >= this passes the pose filter
MOUTH_LAG_FRAMES = 1  # the mouth at frame f follows the audio envelope at frame f - 1
DEFAULT_AUDIO_CLEAN_RATE = 0.36
DEFAULT_POSE_CLEAN_RATE = 0.36
DEFAULT_CAMERA_MOTION_RATE = 0.3
AUDIO_MARGIN_FRAMES = 20  # extra speech synthesized on either side, for the lag and the shifts
MAX_CORRUPTION_CORRELATION = 0.35  # a corrupted clip's audio is redrawn until it correlates below this
SAMPLE_RATE = speech.SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class ClipConditions:
    """The realism knobs of one clip."""

    audio_corruption: str  # "none", "shift" or "swap"
    camera_motion: bool
    hands_dropped_fraction: float
    aesthetics: float


@dataclasses.dataclass(frozen=True)
class ClipTruth:
    """Everything about a clip except its pixels."""

    conditions: ClipConditions
    audio_pcm: np.ndarray  # (N,) int16 written to the wav
    driving_pcm: np.ndarray  # (N,) int16 the mouth follows (equal to audio_pcm when clean)
    audio_shift_frames: int
    motion: motion.ClipMotion
    scores: dict[str, float]


def sample_conditions(
    rng: np.random.Generator,
    audio_clean_rate: float = DEFAULT_AUDIO_CLEAN_RATE,
    pose_clean_rate: float = DEFAULT_POSE_CLEAN_RATE,
    camera_motion_rate: float = DEFAULT_CAMERA_MOTION_RATE,
) -> ClipConditions:
    """Draw one clip's knobs."""
    for name, rate in (
        ("audio_clean_rate", audio_clean_rate),
        ("pose_clean_rate", pose_clean_rate),
        ("camera_motion_rate", camera_motion_rate),
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate}")
    audio_clean = rng.random() < audio_clean_rate
    corruption = "none" if audio_clean else ("shift" if rng.random() < 0.6 else "swap")
    pose_clean = rng.random() < pose_clean_rate
    dropped = rng.uniform(0.0, 0.08) if pose_clean else rng.uniform(0.35, 0.8)
    return ClipConditions(
        audio_corruption=corruption,
        camera_motion=bool(rng.random() < camera_motion_rate),
        hands_dropped_fraction=float(dropped),
        aesthetics=float(rng.uniform(4.0, 7.0)),
    )


def _frame_sample(frame: int, fps: float, sr: int) -> int:
    return int(round(frame * sr / fps))


def _window(pcm: np.ndarray, start_frame: int, num_frames: int, fps: float, sr: int) -> np.ndarray:
    return pcm[_frame_sample(start_frame, fps, sr) : _frame_sample(start_frame + num_frames, fps, sr)]


def _corrupt_audio(rng, pcm, opening, corruption, num_frames, fps, sr, total_s) -> tuple[np.ndarray, int]:
    """Shifted or swapped audio that no longer matches the mouth. Returns (pcm window, shift frames)."""
    best: tuple[float, np.ndarray, int] | None = None
    for _ in range(8):
        if corruption == "shift":
            shift = int(rng.choice([-1, 1]) * rng.integers(6, 16))
            window, other = _window(pcm, AUDIO_MARGIN_FRAMES + shift, num_frames, fps, sr), shift
        else:
            voice = speech.synthesize_speech(rng, total_s, float(rng.uniform(95.0, 230.0)), sr)
            window, other = _window(speech.to_pcm16(voice.wav), AUDIO_MARGIN_FRAMES, num_frames, fps, sr), 0
        env = measure.audio_envelope(speech.pcm16_to_float(window), sr, fps, num_frames)
        corr = measure.lagged_correlation(opening, env)[0]
        if best is None or corr < best[0]:
            best = (corr, window, other)
        if corr < MAX_CORRUPTION_CORRELATION:
            break
    return best[1], best[2]


def simulate_clip(
    rng: np.random.Generator,
    person: identity_lib.Identity,
    conditions: ClipConditions,
    *,
    height: int = 64,
    width: int = 64,
    fps: float = 25.0,
    seconds: float = 2.0,
    sr: int = SAMPLE_RATE,
) -> ClipTruth:
    """Audio, motion, keypoints and scores of one clip (no rendering)."""
    num_frames = int(round(seconds * fps))
    if num_frames < 2 * measure.DEFAULT_MAX_LAG + 3:
        raise ValueError(f"a clip needs at least {2 * measure.DEFAULT_MAX_LAG + 3} frames; raise --seconds")
    total_frames = num_frames + 2 * AUDIO_MARGIN_FRAMES
    total_s = total_frames / fps
    utterance = speech.synthesize_speech(rng, total_s, person.voice_f0_hz, sr)
    pcm = speech.to_pcm16(utterance.wav)
    env_full = measure.audio_envelope(speech.pcm16_to_float(pcm), sr, fps, total_frames)
    start = AUDIO_MARGIN_FRAMES - MOUTH_LAG_FRAMES
    mouth_env = env_full[start : start + num_frames]  # (F,) envelope at frame f - lag
    reference = float(np.percentile(env_full, 95))
    onsets = np.array([round(a * fps / sr) - AUDIO_MARGIN_FRAMES for a, _ in utterance.syllables])
    clip_motion = motion.simulate_motion(
        rng,
        person,
        height,
        width,
        mouth_env,
        reference,
        onsets,
        camera_motion=conditions.camera_motion,
        hands_dropped_fraction=conditions.hands_dropped_fraction,
    )
    driving = _window(pcm, AUDIO_MARGIN_FRAMES, num_frames, fps, sr)
    audio, shift = driving, 0
    if conditions.audio_corruption != "none":
        audio, shift = _corrupt_audio(
            rng, pcm, clip_motion.mouth_opening, conditions.audio_corruption, num_frames, fps, sr, total_s
        )
    env = measure.audio_envelope(speech.pcm16_to_float(audio), sr, fps, num_frames)
    corr = measure.lagged_correlation(clip_motion.mouth_opening, env)[0]
    centres = measure.hand_centres_from_keypoints(clip_motion.keypoints)
    scores = {
        "lipsync": round(10.0 * max(0.0, corr), 4),
        "pose_visibility": round(motion.pose_visibility(clip_motion.keypoints), 4),
        "aesthetics": round(conditions.aesthetics, 4),
        "motion_amplitude": round(measure.displacement_amplitude(centres), 4),
    }
    return ClipTruth(conditions, audio, driving, shift, clip_motion, scores)


def passes_filters(scores: dict[str, float]) -> tuple[bool, bool]:
    """(audio eligible, pose eligible) under the default thresholds."""
    return scores["lipsync"] >= LIPSYNC_THRESHOLD, scores["pose_visibility"] >= POSE_VISIBILITY_THRESHOLD


def _identity_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0, index]))


def _clip_rng(seed: int, index: int, clip: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 1, index, clip]))


def _check_output_dir(out: Path, overwrite: bool) -> None:
    manifest = out / "manifest.jsonl"
    clips = out / "clips"
    if not overwrite and (manifest.exists() or (clips.is_dir() and any(clips.iterdir()))):
        raise FileExistsError(
            f"{out} already holds a toy-world dataset ({manifest} or files in {clips}); "
            "choose a new --out or pass --overwrite"
        )


def generate_dataset(
    out: str | os.PathLike,
    num_identities: int,
    clips_per_identity: int,
    seed: int,
    *,
    height: int = 64,
    width: int = 64,
    fps: float = 25.0,
    seconds: float = 2.0,
    eval_identities: int = 1,
    audio_clean_rate: float = DEFAULT_AUDIO_CLEAN_RATE,
    pose_clean_rate: float = DEFAULT_POSE_CLEAN_RATE,
    camera_motion_rate: float = DEFAULT_CAMERA_MOTION_RATE,
    crf: int = render.DEFAULT_CRF,
    overwrite: bool = False,
) -> list[dict]:
    """Write the dataset under `out` and return the manifest entries."""
    if num_identities < 1 or clips_per_identity < 1:
        raise ValueError(
            f"need num_identities >= 1 and clips_per_identity >= 1, "
            f"got {num_identities} and {clips_per_identity}"
        )
    if not 0 <= eval_identities <= num_identities:
        raise ValueError(
            f"eval_identities must be in [0, num_identities={num_identities}], got {eval_identities}"
        )
    if height < 16 or width < 16 or height % 2 or width % 2:
        raise ValueError(f"height and width must be even and >= 16, got {height}x{width}")
    if fps <= 0 or seconds <= 0:
        raise ValueError(f"fps and seconds must be positive, got {fps}, {seconds}")
    out = Path(out)
    _check_output_dir(out, overwrite)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(num_identities):
        person = identity_lib.sample_identity(_identity_rng(seed, i), name=f"id{i:04d}")
        split = "eval" if i >= num_identities - eval_identities else "train"
        for k in range(clips_per_identity):
            clip_id = f"{person.name}_c{k:03d}"
            rng = _clip_rng(seed, i, k)
            conditions = sample_conditions(rng, audio_clean_rate, pose_clean_rate, camera_motion_rate)
            truth = simulate_clip(
                rng, person, conditions, height=height, width=width, fps=fps, seconds=seconds
            )
            frames = render.render_clip(person, truth.motion, height, width)  # (F, H, W, 3)
            _write_clip(out / "clips", clip_id, frames, truth, fps, crf)
            entries.append(
                {
                    "clip_id": clip_id,
                    "video": f"clips/{clip_id}.mp4",
                    "audio": f"clips/{clip_id}.wav",
                    "keypoints": f"clips/{clip_id}.kp.npy",
                    "caption": identity_lib.caption(person, camera_motion=conditions.camera_motion),
                    "scores": truth.scores,
                    "identity": person.name,
                    "split": split,
                }
            )
    settings = dict(
        seed=seed, num_identities=num_identities, clips_per_identity=clips_per_identity,
        height=height, width=width, fps=fps, seconds=seconds, eval_identities=eval_identities,
        sample_rate=SAMPLE_RATE, audio_clean_rate=audio_clean_rate, pose_clean_rate=pose_clean_rate,
        camera_motion_rate=camera_motion_rate, crf=crf, lipsync_threshold=LIPSYNC_THRESHOLD,
        pose_visibility_threshold=POSE_VISIBILITY_THRESHOLD, mouth_lag_frames=MOUTH_LAG_FRAMES,
    )  # fmt: skip
    _write_text_atomic(out / "toyworld.json", json.dumps(settings, indent=2, sort_keys=True) + "\n")
    _write_text_atomic(out / "manifest.jsonl", "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    return entries


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_clip(
    clips: Path, clip_id: str, frames: np.ndarray, truth: ClipTruth, fps: float, crf: int
) -> None:
    render.write_mp4(clips / f"{clip_id}.mp4", frames, fps, crf=crf)
    render.write_wav(clips / f"{clip_id}.wav", truth.audio_pcm, SAMPLE_RATE)
    np.save(clips / f"{clip_id}.kp.npy", truth.motion.keypoints)
    m = truth.motion
    np.savez(
        clips / f"{clip_id}.truth.npz",
        mouth_opening=m.mouth_opening,
        hand_centres=m.hands,
        camera=m.camera,
        static_mask=np.all(frames == frames[:1], axis=(0, 3)),
        reference_frame=frames[0],
        driving_audio=truth.driving_pcm,
        mouth_lag_frames=MOUTH_LAG_FRAMES,
        mouth_width=m.mouth_width,
        hand_radius=m.hand_radius,
        audio_corruption=truth.conditions.audio_corruption,
        audio_shift_frames=truth.audio_shift_frames,
        hands_dropped_fraction=truth.conditions.hands_dropped_fraction,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_pipeline.toyworld.generate",
        description="Generate a procedural toy-world talking-person dataset: mp4, wav, keypoints and "
        "manifest.jsonl with lipsync/pose_visibility scores (see the module docstring).",
    )
    p.add_argument("--out", required=True, help="output folder; manifest.jsonl and clips/ are written here")
    p.add_argument("--num_identities", type=int, required=True, help="number of distinct toy people")
    p.add_argument("--clips_per_identity", type=int, required=True, help="clips generated for each identity")
    p.add_argument(
        "--seed", type=int, required=True, help="random seed; the output depends only on it and the flags"
    )
    p.add_argument("--height", type=int, default=64, help="frame height in pixels (even, >= 16)")
    p.add_argument("--width", type=int, default=64, help="frame width in pixels (even, >= 16)")
    p.add_argument("--fps", type=float, default=25.0, help="video frame rate")
    p.add_argument("--seconds", type=float, default=2.0, help="clip length in seconds")
    p.add_argument(
        "--eval_identities", type=int, default=1, help="the last E identities are held out as split 'eval'"
    )
    p.add_argument("--audio_clean_rate", type=float, default=DEFAULT_AUDIO_CLEAN_RATE,
                   help="probability a clip has in-sync audio (else shifted or swapped)")  # fmt: skip
    p.add_argument("--pose_clean_rate", type=float, default=DEFAULT_POSE_CLEAN_RATE,
                   help="probability a clip keeps its hands in frame (else low pose_visibility)")  # fmt: skip
    p.add_argument("--camera_motion_rate", type=float, default=DEFAULT_CAMERA_MOTION_RATE,
                   help="probability a clip has a moving camera")  # fmt: skip
    p.add_argument(
        "--crf", type=int, default=render.DEFAULT_CRF, help="libx264 constant rate factor (lower: better)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    entries = generate_dataset(
        args.out, args.num_identities, args.clips_per_identity, args.seed,
        height=args.height, width=args.width,
        fps=args.fps, seconds=args.seconds, eval_identities=args.eval_identities,
        audio_clean_rate=args.audio_clean_rate, pose_clean_rate=args.pose_clean_rate,
        camera_motion_rate=args.camera_motion_rate, crf=args.crf, overwrite=args.overwrite,
    )  # fmt: skip
    both = sum(all(passes_filters(e["scores"])) for e in entries)
    print(
        f"wrote {len(entries)} clips to {args.out}/manifest.jsonl; "
        f"{both} pass both the audio and pose filters"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
