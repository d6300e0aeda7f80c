"""Build the training dataset: manifest -> featurized records -> TFDS ArrayRecord (docs/design.md).

    python -m data_pipeline.build --manifest clips.jsonl --out /data/omnihuman \\
        --wav2vec /models/wav2vec2-base --text_encoder /models/umt5 --vae /models/hunyuan_vae --workers 4

It wires `data_pipeline.featurize.featurize_manifest` (OmniHuman-1 section 3 data preparation: buckets,
`F = 1 + 4k` clips, VAE latents or frames, audio and text features, eligibility from scores) into
`data_pipeline.tfds_builder.write_dataset` (validated, shuffled at write time, swapped in only once
complete). It writes `OUT/featurize_report.json` (skip counts by reason, plus what was stored) and prints
the summary. The exit status is 0 when a dataset was written, 1 when no clip survived (an existing
dataset is then left as it was).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from data_pipeline import tfds_builder
from data_pipeline.featurize import FeaturizeOptions, featurize_manifest
from omnihuman_jax import xla_env

REPORT_FILE = "featurize_report.json"


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default only when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, "", False):
            return action.help or ""
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    defaults = FeaturizeOptions()
    p = argparse.ArgumentParser(
        prog="python -m data_pipeline.build",
        description="Featurize a raw-clip manifest (JSONL, docs/design.md) into a TFDS ArrayRecord dataset.",
        formatter_class=_HelpFormatter,
    )
    io = p.add_argument_group("input and output")
    io.add_argument("--manifest", required=True, help="raw-clip manifest (JSONL); paths are relative to it")
    io.add_argument("--out", required=True, help="TFDS data dir; the dataset lands in OUT/NAME/VERSION")
    io.add_argument("--name", default=tfds_builder.DEFAULT_NAME, help="dataset name (config.data.name)")
    io.add_argument(
        "--split", default=None, help="featurize only manifest entries of this split; unset: all splits"
    )
    io.add_argument(
        "--allow_outside_root", action="store_true", help="let manifest paths leave the manifest's folder"
    )
    enc = p.add_argument_group("encoders (local folders only; no downloads)")
    enc.add_argument("--wav2vec", default="", help="Wav2Vec2Model folder; implies --audio_frontend wav2vec2")
    enc.add_argument(
        "--audio_frontend",
        choices=("logmel", "wav2vec2"),
        default=None,
        help="audio features: log-mel (no weights) or wav2vec2 hidden states (default: wav2vec2 when "
        "--wav2vec is given, else logmel)",
    )
    enc.add_argument(
        "--audio_layers", type=_int_tuple, default=None, help="wav2vec2 hidden-state layers kept, e.g. 0,6,12"
    )
    enc.add_argument("--mel_bins", type=int, default=defaults.mel_bins, help="log-mel bins (D_audio)")
    enc.add_argument("--mel_groups", type=int, default=defaults.mel_groups, help="log-mel windows per frame")
    enc.add_argument(
        "--text_encoder", default="", help="T5/UMT5 encoder folder with tokenizer; none: no text"
    )
    enc.add_argument("--text_max_len", type=int, default=defaults.text_max_len, help="caption tokens kept")
    enc.add_argument("--vae", default="", help="diffusers-format VAE folder; none: store RGB frames")
    enc.add_argument("--vae_chunk_frames", type=int, default=None, help="frames per VAE encode chunk")
    clip = p.add_argument_group("clips")
    clip.add_argument("--fps", type=float, default=defaults.fps, help="frame rate clips are resampled to")
    clip.add_argument("--pixel_budget", type=int, default=defaults.pixel_budget, help="bucket area in pixels")
    clip.add_argument("--clip_frames", type=int, default=defaults.clip_frames, help="frames per clip, 1 + 4k")
    clip.add_argument(
        "--clip_stride", type=int, default=None, help="frames between clip starts (default: no overlap)"
    )
    clip.add_argument("--max_clips_per_video", type=int, default=None, help="cap on clips cut from one video")
    clip.add_argument(
        "--num_ref_candidates",
        type=int,
        default=defaults.num_ref_candidates,
        help="reference frames per clip",
    )
    clip.add_argument(
        "--max_duration_s", type=float, default=defaults.max_duration_s, help="refuse longer source videos"
    )
    gate = p.add_argument_group("condition eligibility (OmniHuman-1 section 3.3)")
    gate.add_argument(
        "--lipsync_threshold",
        type=float,
        default=defaults.lipsync_threshold,
        help="audio_eligible when the lipsync score >= this",
    )
    gate.add_argument(
        "--pose_visibility_threshold",
        type=float,
        default=defaults.pose_visibility_threshold,
        help="pose_eligible: pose_visibility >= this and keypoints present",
    )
    run = p.add_argument_group("run")
    run.add_argument("--workers", type=int, default=0, help="featurize processes (0: in this process)")
    run.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


def options_from_args(args: argparse.Namespace) -> FeaturizeOptions:
    frontend = args.audio_frontend or ("wav2vec2" if args.wav2vec else "logmel")
    return FeaturizeOptions(
        fps=args.fps,
        pixel_budget=args.pixel_budget,
        clip_frames=args.clip_frames,
        clip_stride=args.clip_stride,
        max_clips_per_video=args.max_clips_per_video,
        audio_frontend=frontend,
        audio_model_dir=args.wav2vec,
        audio_layers=args.audio_layers,
        mel_bins=args.mel_bins,
        mel_groups=args.mel_groups,
        text_encoder_dir=args.text_encoder,
        text_max_len=args.text_max_len,
        vae_path=args.vae,
        vae_chunk_frames=args.vae_chunk_frames,
        num_ref_candidates=args.num_ref_candidates,
        lipsync_threshold=args.lipsync_threshold,
        pose_visibility_threshold=args.pose_visibility_threshold,
        allow_outside_root=args.allow_outside_root,
        max_duration_s=args.max_duration_s,
        split=args.split,
    )


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = options_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = featurize_manifest(args.manifest, options, num_workers=args.workers, progress=not args.no_progress)
    written: dict[str, Any] = {}
    status, error = 0, ""
    try:
        report = tfds_builder.write_dataset(run, out, args.name)
        written = dict(
            dataset_dir=report.dataset_dir,
            num_records=report.num_records,
            skipped_at_write=[dict(clip_id=c, reason=r) for c, r in report.skipped],
        )
    except ValueError as e:  # no clip survived: keep the report, keep any existing dataset
        status, error = 1, str(e)
    finally:
        run.close()
    _write_json(out / REPORT_FILE, {**run.report.to_dict(), "options": vars(args), "written": written})
    print(run.report.summary())
    if written:
        print(f"wrote {written['dataset_dir']}: {written['num_records']} records", end="")
        print(
            f", {len(written['skipped_at_write'])} rejected at write" if written["skipped_at_write"] else ""
        )
    else:
        print(f"error: {error}", file=sys.stderr)
    print(f"report: {out / REPORT_FILE}")
    return status


if __name__ == "__main__":
    xla_env.apply()  # featurizing encodes frames with the VAE
    sys.exit(main())
