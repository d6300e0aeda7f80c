"""The toy-world learning proof (OmniHuman-1 sections 3.3, 4.3): does the recipe learn each condition?

  python -m benchmarks.learning_proof --workdir=runs/proof [--recipe=proof] [--doc=docs/learning_proof.md]

Runs the recipe of configs/toyworld.py through launch/toyworld.py (world, VAE, stages 1-3), then on the
held-out identities compares:
1. audio-driven, 2. pose-driven, 3. audio + pose (the main stage-3 model);
4. an ablation trained without the audio condition (audio ratio 0 in stages 2 and 3), driven by audio;
5. the Principle-2 sweep: stage 3 with pose ratio 0.2 / 0.5 / 0.8, driven by audio only (motion amplitude);
6. CFG constant vs annealed (linear) on audio driving (sync and identity).
It writes the markdown report with a table, the targets (met or missed, and by how much), the audio/text
frontends used, a bar plot PNG and a frame strip PNG next to it. Nothing is tuned on the held-out
identities: the recipe is fixed in configs/toyworld.py before they are sampled.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from launch import toyworld as tw
from launch.evaluate import format_table

# (metric, comparison, threshold, row) of issue 5's targets on held-out identities.
SYNC_TARGET, ABLATION_SYNC_LIMIT = 0.6, 0.2  # issue 5: audio-driven sync >= 0.6, the ablation's <= 0.2
TARGETS = (
    ("sync", ">=", SYNC_TARGET, "1 audio-driven"),
    ("sync", "<=", ABLATION_SYNC_LIMIT, "4 no-audio ablation, audio-driven"),
    ("pose_err_px", "<=", 3.0, "2 pose-driven"),
    ("psnr", ">=", 25.0, "1 audio-driven"),
    ("sync", ">=", 0.9, "ground truth"),
    ("pose_err_px", "<=", 1.0, "ground truth"),
)
# The pose error is measured only where a hand is seen: below this share of seen hands it cannot count as met.
HANDS_FOUND_MIN = 0.9
# Training flags of the recipe named in the report besides batch and lr (the bookkeeping ones are not).
RECIPE_FLAG_PREFIXES = ("flow.", "model.", "optimizer.lr_multipliers", "optimizer.ema_decay")


def run_proof(cfg: Any, root: Path) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    t0 = time.perf_counter()
    root = root.resolve()
    tw.run_recipe(cfg, root)
    world, vae, data = root / "world", root / "vae", root / "data"
    inputs = tw.eval_inputs(world, root, int(cfg.eval.clips))
    fps = cfg.world.fps
    rows = {"ground truth": tw.score_truth(world, [str(i["clip_id"]) for i in inputs], fps)}
    rows["0 VAE reconstruction (bound)"] = score_vae_reconstruction(world, vae, inputs, fps)
    main = root / "stage3"

    def sampled(checkpoint: Path, mode: str, folder: str = "", sampling: dict | None = None) -> dict:
        """Metrics of one video per held-out clip from `checkpoint`, driven by `mode`."""
        folder_path = tw.step_sample(cfg, root, checkpoint, vae, inputs, mode, folder, sampling)
        return tw.score(world, folder_path, fps)

    for label, mode in (("1 audio-driven", "audio"), ("2 pose-driven", "pose"), ("3 audio+pose", "combined")):
        rows[label] = sampled(main, mode)
    ab = cfg.ablations
    prev = root / "stage1"
    for stage in ab.no_audio.stages:
        prev = tw.step_stage(
            cfg, root, stage, data, vae, prev, f"no_audio_stage{stage}", ab.no_audio.overrides
        )
    rows["4 no-audio ablation, audio-driven"] = sampled(prev, "audio", "no_audio")
    for name in ("pose_02", "pose_05", "pose_08"):
        run = tw.step_stage(cfg, root, 3, data, vae, root / "stage2", name, ab[name].overrides)
        rows[f"5 pose ratio 0.{name[-1]}, audio-driven"] = sampled(run, "audio", name)
    for label, schedule in (("constant", "constant"), ("annealed", "linear")):
        if schedule == cfg.sampling.cfg_schedule:  # the same samples as row 1: score them, don't redraw
            rows[f"6 CFG {label}, audio-driven"] = dict(rows["1 audio-driven"])
            continue
        overrides = {"cfg_schedule": schedule}
        rows[f"6 CFG {label}, audio-driven"] = sampled(main, "audio", f"cfg_{label}", overrides)
    return rows, {"total_s": round(time.perf_counter() - t0, 1)}


def score_vae_reconstruction(world: Path, vae: Path, inputs: list[dict], fps: float) -> dict[str, float]:
    """Metrics of the held-out ground-truth clips after a VAE encode/decode round trip.

    No generated video can score better than its VAE lets it: this row bounds every sampled row.
    """
    from data_pipeline.toyworld import render
    from launch.evaluate import load_truth, score_frames, summarize
    from launch.probe_vae import vae_roundtrip

    roundtrip = vae_roundtrip(vae)
    per_clip = {}
    for item in inputs:
        frames = render.read_mp4(world / "clips" / f"{item['clip_id']}.mp4")  # (F, H, W, 3)
        frames = frames[: 1 + 4 * ((frames.shape[0] - 1) // 4)]  # 1 + 4k frames
        recon = roundtrip(frames[None])[0]  # (F, H, W, 3) uint8
        per_clip[str(item["clip_id"])] = score_frames(recon, load_truth(world, str(item["clip_id"])), fps)
    return summarize(per_clip)


def check_targets(rows: dict[str, dict[str, float]]) -> list[str]:
    lines = []
    for metric, op, threshold, row in TARGETS:
        value = rows.get(row, {}).get(metric, float("nan"))
        if not math.isfinite(value):
            lines.append(f"- {row}: {metric} not measured (NaN): target {op} {threshold} **not shown**")
            continue
        met = value >= threshold if op == ">=" else value <= threshold
        gap = "" if met else f", missed by {abs(value - threshold):.3g}"
        found = rows[row].get("hands_found", float("nan"))
        if metric == "pose_err_px" and met and found < HANDS_FOUND_MIN:
            met, gap = False, f": hands seen in only {found:.0%} of the frames, where alone it is measured"
        audio_sync = rows.get("1 audio-driven", {}).get("sync", float("nan"))
        if met and row.startswith("4 ") and not audio_sync > ABLATION_SYNC_LIMIT:
            gap = " (vacuous: the audio-driven model shows no sync either)"
        elif met and row.startswith("4 ") and not audio_sync >= SYNC_TARGET:
            gap = f" (half of a pair: the audio-driven row, {audio_sync:.3f}, misses its own target)"
        lines.append(
            f"- {row}: {metric} = {value:.3f}, target {op} {threshold}: **{'met' if met else 'missed'}**{gap}"
        )
    return lines


def bar_plot(rows: dict[str, dict[str, float]], out_png: Path) -> None:
    """Bars of sync (blue) and motion amplitude (orange, px/frame / 4) per row, drawn with PIL."""
    from PIL import Image, ImageDraw

    names = list(rows)
    width, row_h, left = 760, 26, 300
    img = Image.new("RGB", (width, row_h * len(names) + 40), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 4), "sync (blue, 0..1)   motion px/frame / 4 (orange)", fill="black")
    scale = width - left - 20
    for i, name in enumerate(names):
        y = 24 + i * row_h
        d.text((4, y + 6), name[:44], fill="black")
        sync, motion = rows[name].get("sync", float("nan")), rows[name].get("motion_px", float("nan"))
        if math.isfinite(sync):
            d.rectangle([left, y + 2, left + max(0.0, sync) * scale, y + 11], fill=(40, 90, 200))
        if math.isfinite(motion):
            d.rectangle([left, y + 13, left + min(motion / 4, 1.0) * scale, y + 22], fill=(230, 130, 30))
    d.line([left, 20, left, img.height], fill="black")
    img.save(out_png)


def _ablation_steps(ablation: Any) -> str:
    """', N steps' when an ablation overrides its stages' total_steps, else ''."""
    steps = dict(ablation.overrides).get("total_steps")
    return "" if steps is None else f", {steps} steps"


def chance_lines(rows: dict[str, dict[str, float]]) -> list[str]:
    """The sync chance level of each sampled row: its samples against another held-out clip's audio."""
    chance = {k: v["sync_swapped"] for k, v in rows.items() if "sync_swapped" in v}
    if not chance:
        return []
    lines = ["## Chance level of sync"]
    lines += [
        f"- {k}: sync {rows[k]['sync']:.3f} against its own audio, {v:.3f} against another held-out clip's "
        "(`launch.evaluate --swap_audio`)"
        for k, v in chance.items()
    ]
    return lines + [""]


def recipe_lines(cfg: Any, root: Path) -> list[str]:
    """What was trained, for how long, and the wall time of each step of the main job."""
    steps = {name: dict(pairs)["total_steps"] for name, pairs in cfg.stages.items()}
    rates = {name: dict(pairs)["optimizer.lr"] for name, pairs in cfg.stages.items()}
    train = dict(cfg.train)
    lines = [
        f"- VAE: {cfg.vae.total_steps} steps ({cfg.vae.get('image_steps', 0)} on single frames first), "
        f"batch {cfg.vae.batch_size}, {cfg.vae.latent_channels} latent channels, on its own world of "
        f"{cfg.vae_world.num_identities} identities x one {cfg.vae_world.seconds} s clip (seed "
        f"{cfg.vae_world.seed}; none of them held out or evaluated)"
        + "".join(f", loss.{k} {v}" for k, v in dict(cfg.vae.get("loss", {})).items())
        + (", video_lr_restart" if cfg.vae.get("video_lr_restart") else "")
        + ".",
        f"- DiT: preset `{cfg.preset}`, batch {train['batch_size']}, lr ("
        + ", ".join(f"{k} {v}" for k, v in rates.items())
        + ")"
        + "".join(f", {k} {v}" for k, v in train.items() if k.startswith(RECIPE_FLAG_PREFIXES))
        + "; steps "
        + ", ".join(f"{k} {v}" for k, v in steps.items())
        + "; ablations: "
        + ", ".join(f"{k} (stages {tuple(v.stages)}{_ablation_steps(v)})" for k, v in cfg.ablations.items())
        + ".",
        f"- Sampling: {cfg.sampling.steps} Euler steps, audio CFG {cfg.sampling.cfg_audio}, pose CFG "
        f"{cfg.sampling.get('cfg_pose', 1.0)} in pose-driven rows ({cfg.sampling.cfg_schedule} schedule "
        "unless stated).",
    ]
    metrics = root / "metrics.json"
    if metrics.is_file():
        timings = json.loads(metrics.read_text()).get("timings_s", {})
        ran = {k: v for k, v in timings.items() if v >= 1.0}  # steps found done on a resumed run take ~0 s
        if ran:
            lines.append("- Main-job wall time (s): " + ", ".join(f"{k} {v}" for k, v in ran.items()) + ".")
        reused = [k for k, v in timings.items() if v < 1.0]
        if reused:
            lines.append(
                "- Found done in the workdir and reused, so not in this invocation's time: "
                + ", ".join(reused)
                + "."
            )
    return lines


def write_doc(cfg: Any, root: Path, rows: dict, timing: dict, doc: Path) -> None:
    doc.parent.mkdir(parents=True, exist_ok=True)
    plot, strip = doc.with_suffix(".png"), doc.with_name(doc.stem + "_frames.png")
    bar_plot(rows, plot)
    sample = sorted((root / "samples" / "audio").glob("*.mp4"))
    if sample:
        tw.first_frames_strip(sample[0], strip)
    w = cfg.world
    text = [
        "# Toy-world learning proof",
        "",
        f"Produced by `python -m benchmarks.learning_proof --workdir={root} --recipe={cfg.recipe}` "
        f"in {timing['total_s'] / 60:.1f} min. World: {w.num_identities} identities x "
        f"{w.clips_per_identity} clips of {w.seconds} s at {w.height}x{w.width}, the last "
        f"{w.eval_identities} identities held out; audio/pose clean rates raised to {w.audio_clean_rate} / "
        f"{w.pose_clean_rate} (the filters still apply). Audio frontend: log-mel ({cfg.data.mel_bins} bins x "
        f"{cfg.data.mel_groups} sub-windows per frame; no pretrained wav2vec2 offline). Text: none (no text "
        "encoder; text ratio 0). Metrics from `launch.evaluate` on held-out clips.",
        "",
        format_table(rows),
        "",
        "## Targets",
        *check_targets(rows),
        "",
        *chance_lines(rows),
        "## Recipe and time",
        *recipe_lines(cfg, root),
        "",
        f"![sync and motion per run]({plot.name})",
        "",
        f"Frames of an audio-driven sample of a held-out identity: ![frames]({strip.name})" if sample else "",
        "",
    ]
    doc.write_text("\n".join(text))
    (root / "learning_proof.json").write_text(json.dumps({"rows": rows, **timing}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.learning_proof", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--workdir", required=True, help="run folder (resumable; shared steps are skipped)")
    p.add_argument("--recipe", default="proof", help="configs/toyworld.py recipe (default: proof)")
    p.add_argument("--doc", default="docs/learning_proof.md", help="markdown report to write")
    args = p.parse_args(argv)
    from configs.toyworld import get_config

    cfg = get_config(args.recipe)
    root = Path(args.workdir).resolve()
    rows, timing = run_proof(cfg, root)
    write_doc(cfg, root, rows, timing, Path(args.doc))
    print(format_table(rows))
    print("\n".join(check_targets(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
