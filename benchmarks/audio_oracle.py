"""Would the DiT use audio if the audio said exactly how open the mouth is? An oracle-condition test.

OmniHuman-1 (section 3.2) drives the lips from audio through per-frame audio tokens and cross-attention. In
the toy world the DiT had not used its audio (docs/learning_proof_history.md, session 16), and
`benchmarks/audio_probe.py` shows the log-mel features hold the information. This asks which side of the
audio path is short: the features, or the DiT's use of them. It copies a run's dataset (to RUN/oracle_data)
with every clip's audio features replaced by an oracle: a place code of the clip's true inner-lip opening,
measured from its COCO-WholeBody mouth landmarks (Gaussian bumps over the feature bins, repeated over the
feature layers). It trains stage 2 on that copy from the run's stage 1 with the recipe's flags, and scores
both that model and the run's own stage 2 on the mouth block of the last latent frame
(`audio_probe.mouth_patches`), with motion frames on and each sample's own audio against another sample's
(swapped):

- per flow time in `--times`, `mouth_x0_mse_own` / `_swapped`: the x0 error on the block;
- `audio_gain`: (swapped - own) / swapped, the share of the mouth error the audio removes (0 = unused);
- `audio_token_spread`: the spread of the audio projector's tokens over samples and frames relative to
  their size (0 = the projector says the same whatever the audio).

A model whose gain is near 0 on the oracle would not use any audio frontend either.

  python -m benchmarks.audio_oracle --run=runs/p15 --recipe=proof   # also writes RUN/NAME/audio_oracle.json
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from typing import Any

import numpy as np

INNER_LIP = (83, 91)  # COCO-WholeBody face points 60-67 (iBUG order): the inner lip contour
CODE_RANGE = (0.0, 12.0)  # px of opening covered by the place code's bins
CODE_WIDTH = 0.6  # px, the Gaussian bumps' sigma relative to a 64-px-high frame


def lip_opening(keypoints: np.ndarray, height: int) -> np.ndarray:
    """(F, 133, 3) keypoints, x and y in [0, 1] of the frame -> (F,) inner-lip height in pixels."""
    y = keypoints[:, INNER_LIP[0] : INNER_LIP[1], 1] * height  # (F, 8)
    return (y.max(axis=1) - y.min(axis=1)).astype(np.float32)


def place_code(values: np.ndarray, bins: int, lo: float, hi: float, width: float) -> np.ndarray:
    """(F,) values -> (F, bins) Gaussian bumps centred on `bins` points spread over [lo, hi].

    The value is carried by which bins are active rather than by a scale, so a layer norm keeps it.
    """
    centres = np.linspace(lo, hi, bins)
    return np.exp(-0.5 * ((values[:, None] - centres[None]) / width) ** 2).astype(np.float32)


def oracle_record(record: dict[str, Any]) -> dict[str, Any]:
    """A dataset record whose audio features (F, L, D) become the place code of its lip opening.

    Records without keypoints or audio features are returned unchanged (they carry no audio either way).
    """
    keypoints, audio = record["keypoints"], record["audio_features"]
    if keypoints.shape[0] == 0 or audio.shape[0] == 0:
        return record
    height = int(record["height"])
    scale = height / 64.0  # the code's px range is set for 64-px-high frames
    opening = lip_opening(keypoints, height) / scale  # (F,)
    code = place_code(opening, audio.shape[-1], *CODE_RANGE, CODE_WIDTH)  # (F, D)
    return {**record, "audio_features": np.broadcast_to(code[:, None], audio.shape).copy()}


def write_oracle_dataset(src: Path, out: Path) -> dict[str, int]:
    """Copies the dataset under `src` to `out` with oracle audio features; returns records per split."""
    from data_pipeline import tfds_builder

    version = tfds_builder.dataset_version_dir(src)
    import tensorflow_datasets as tfds

    splits = list(tfds.builder_from_directory(version).info.splits)

    def records():
        for split in splits:
            source = tfds_builder.open_data_source(src, split=split)
            for i in range(len(source)):
                record = dict(source[i])
                clip_id = record["clip_id"]  # TFDS reads Text back as bytes
                record["clip_id"] = clip_id.decode() if isinstance(clip_id, bytes) else str(clip_id)
                yield {**oracle_record(record), "split": split}

    return dict(tfds_builder.write_dataset(records(), out).num_records)


def swapped_order(active: np.ndarray) -> np.ndarray:
    """(B,) bool -> a permutation that moves each active sample's audio to the next active sample."""
    order = np.arange(active.shape[0])
    idx = np.nonzero(active)[0]
    order[idx] = np.roll(idx, 1)
    return order


def score_checkpoint(checkpoint: Path, batches: int, times: list[float], patch: int) -> dict[str, float]:
    """The mouth-block x0 errors with own and swapped audio, and the audio tokens' spread (see module doc)."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from benchmarks.audio_probe import crop, mouth_patches
    from benchmarks.dit_conditions import with_conditions
    from data_pipeline.grain_pipeline import make_train_iterator
    from omnihuman_jax import flow_matching as fm
    from omnihuman_jax.checkpointing import load_params, load_run_config
    from omnihuman_jax.conditions import INDEX, model_inputs
    from omnihuman_jax.models.conditions import AudioProjector
    from omnihuman_jax.trainer import build_model

    cfg = ml_collections.ConfigDict(load_run_config(checkpoint))
    cfg.condition_ratios.audio = 1.0  # every window whose clip passes the lip-sync filter carries audio
    cfg.flow.lip_weight = max(float(cfg.flow.get("lip_weight", 0.0)), 1.0)  # the loader then adds lip_mask
    params, step = load_params(checkpoint, "ema")
    model = build_model(cfg)
    apply_fn = jax.jit(lambda prm, inputs, t: model.apply({"params": prm}, inputs, t))
    m = cfg.model
    projector = AudioProjector(m.hidden_size, m.audio_hidden, m.audio_window, m.audio_tokens_per_frame)
    it = make_train_iterator(cfg)
    err = {(t, name): [] for t in times for name in ("own", "swapped")}
    tokens = []
    for i in range(batches):
        batch = {k: v for k, v in next(it).items() if not k.startswith("_")}
        active = np.asarray(batch["condition_mask"][:, INDEX["audio"]], bool)
        corner, keep = mouth_patches(batch["latents"], batch["lip_mask"], patch)
        keep &= active
        if active.sum() < 2 or not keep.any():
            continue
        feats = np.asarray(batch["audio_feats"])
        tokens.append(np.asarray(projector.apply({"params": params["audio_projector"]}, feats[active])))
        z = jnp.asarray(batch["latents"])
        own = with_conditions(batch, True, True)
        swapped = {**own, "audio_feats": jnp.asarray(feats[swapped_order(active)])}
        for j, t in enumerate(times):
            tt = jnp.full((z.shape[0],), t, jnp.float32)
            x_t = fm.interpolate(z, jax.random.normal(jax.random.key(100 * i + j), z.shape), tt)
            for name, b in (("own", own), ("swapped", swapped)):
                x0 = np.asarray((x_t - t * apply_fn(params, model_inputs(b, x_t), tt))[:, -1])
                sq = (crop(x0, corner) - crop(np.asarray(z[:, -1]), corner)) ** 2  # (B, k, k, C)
                err[t, name].append(sq[keep].mean(axis=(1, 2, 3)))
    if not tokens:
        raise SystemExit(f"error: no batch of {checkpoint}'s dataset had two samples with audio and a mouth")
    tok = np.concatenate(tokens, axis=0)  # (N, T, Na, D)
    out: dict[str, Any] = {
        "step": int(step),
        "windows": int(np.concatenate(err[times[0], "own"]).size),
        "audio_token_spread": float(tok.std(axis=(0, 1, 2)).mean() / np.abs(tok).mean()),
    }
    for t in times:
        own_mse = float(np.mean(np.concatenate(err[t, "own"])))
        swap_mse = float(np.mean(np.concatenate(err[t, "swapped"])))
        out[f"t={t}"] = {
            "mouth_x0_mse_own": own_mse,
            "mouth_x0_mse_swapped": swap_mse,
            "audio_gain": (swap_mse - own_mse) / swap_mse,
        }
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` -> (KEY, VALUE as a Python literal, or the string when it is not one)."""
    if "=" not in text:
        raise SystemExit(f"error: override {text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.audio_oracle", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--run", required=True, help="a launch.toyworld / learning-proof workdir (data, vae, stages)"
    )
    p.add_argument("--recipe", default="proof", help="configs/toyworld.py recipe the run used")
    p.add_argument("--name", default="oracle_stage2", help="run folder for the oracle stage 2")
    p.add_argument("--overrides", default="", help="extra stage-2 overrides, KEY=VALUE[,KEY=VALUE]")
    p.add_argument("--batches", type=int, default=12, help="training batches to score on")
    p.add_argument("--times", default="0.2,0.35,0.5,0.6,0.9", help="comma-separated flow times")
    p.add_argument("--patch", type=int, default=5, help="side of the mouth block, in latent cells")
    args = p.parse_args(argv)
    from configs.toyworld import get_config
    from launch import toyworld as tw

    run = Path(args.run).resolve()
    for need in ("data", "vae", "stage1", "stage2"):
        if not (run / need).exists():
            raise SystemExit(f"error: {run / need} is missing; run `python -m launch.toyworld` there first")
    cfg = get_config(args.recipe)
    oracle_data = run / "oracle_data"  # shared by every --name
    if not (oracle_data / "omnihuman_clips").exists():
        print(f"oracle dataset: {write_oracle_dataset(run / 'data', oracle_data)} records", flush=True)
    extra = [parse_override(kv) for kv in args.overrides.split(",") if kv]
    oracle = tw.step_stage(cfg, run, 2, oracle_data, run / "vae", run / "stage1", args.name, extra)
    times = [float(t) for t in args.times.split(",")]
    out = {
        "times": times,
        "stage2 (log-mel audio)": score_checkpoint(run / "stage2", args.batches, times, args.patch),
        "stage2 on the lip oracle": score_checkpoint(oracle, args.batches, times, args.patch),
    }
    text = json.dumps(out, indent=2)
    (oracle / "audio_oracle.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
