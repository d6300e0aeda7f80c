"""How much of the mouth's change audio explains in the latents: the room a DiT has to use audio.

OmniHuman-1 (section 3.2) drives the lips from audio. `benchmarks/dit_conditions.py` asks whether a trained
DiT uses its audio condition; this asks what there is to use. On training windows of a run's dataset drawn
with audio on, it takes the mouth of the last latent frame (a `--patch` x `--patch` block of latent cells
centred on the mouth landmarks' cells of `data_pipeline.heatmaps.mouth_mask`), and its change from the last
motion latent (latent frame 1, as in `dit_conditions`). Fitted by least squares on three quarters of the
windows and scored on the other quarter:

- `mouth_copy_mse`: the error of repeating the last motion latent (the mean squared change);
- `mouth_mean_mse`: the copy plus the mean change, what a predictor blind to audio does to first order;
- `mouth_audio_linear_mse`: the copy plus a linear map from the window's per-video-frame audio energies
  (each frame's mean feature) to the change, a lower bound on what audio can explain;
- with `--model`: the checkpoint's x0 error on the same cells with motion frames on and audio on / off,
  averaged over `--times` (`mouth_x0_mse_audio_on` / `_off`).

A model that uses audio as well as a linear map does would score the probe's gap between the audio-on and
audio-off rows. The split follows the loader's shuffled order, so overlapping windows of one clip can fall
on both sides of it; with 10 coefficients per target value, the fit can memorise little of them.

  python -m benchmarks.audio_probe --checkpoint=runs/proof/stage2 --batches=150 --model
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

LAST_MOTION = 1  # latent frame 1 is the last motion frame; the last latent frame is predicted


def mouth_patches(latents: np.ndarray, lip_mask: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k x k block around the mouth of each sample's last latent frame.

    latents (B, T, h, w, C), lip_mask (B, T, h, w) -> ((B, 4) block corners (i0, i1, j0, j1), keep (B,)).
    The block is centred on the mask's centroid in the last frame and moved inside the grid; samples
    whose last frame has no mouth cell are not kept.
    """
    b, _, h, w, _ = latents.shape
    if k > min(h, w):
        raise ValueError(f"--patch={k} is larger than the {h} x {w} latent grid")
    corners, keep = np.zeros((b, 4), np.int64), np.zeros(b, bool)
    for n in range(b):
        ii, jj = np.nonzero(lip_mask[n, -1] > 0)
        if ii.size == 0:
            continue
        i0 = int(np.clip(round(ii.mean() - (k - 1) / 2), 0, h - k))
        j0 = int(np.clip(round(jj.mean() - (k - 1) / 2), 0, w - k))
        corners[n], keep[n] = (i0, i0 + k, j0, j0 + k), True
    return corners, keep


def crop(x: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """x (B, h, w, C), corners (B, 4) of equal-size blocks -> (B, k, k, C)."""
    return np.stack([x[n, i0:i1, j0:j1] for n, (i0, i1, j0, j1) in enumerate(corners)])


def linear_probe(features: np.ndarray, change: np.ndarray, holdout: float = 0.25) -> dict[str, float]:
    """features (N, P), change (N, Q) -> held-out MSEs of predicting the change by 0, its mean, and a linear
    map of the features (least squares with an intercept, fitted on the first 1 - holdout of the rows)."""
    n = len(features)
    n_fit = int(round(n * (1 - holdout)))
    if n_fit <= features.shape[1] + 1 or n - n_fit < 2:
        raise ValueError(f"{n} windows are too few for {features.shape[1]} features; raise --batches")
    x = np.concatenate([features, np.ones((n, 1))], axis=1)
    coef = np.linalg.lstsq(x[:n_fit], change[:n_fit], rcond=None)[0]
    test = change[n_fit:]
    return {
        "mouth_copy_mse": float(np.mean(test**2)),
        "mouth_mean_mse": float(np.mean((test - change[:n_fit].mean(axis=0)) ** 2)),
        "mouth_audio_linear_mse": float(np.mean((test - x[n_fit:] @ coef) ** 2)),
    }


def model_mouth_errors(apply_fn, params: Any, batches: list[dict], corners: list, times: list[float]) -> dict:
    """The model's x0 MSE on each batch's mouth blocks (kept samples), motion on, audio on and off."""
    import jax
    import jax.numpy as jnp

    from benchmarks.dit_conditions import with_conditions
    from omnihuman_jax import flow_matching as fm
    from omnihuman_jax.conditions import model_inputs

    err = {True: [], False: []}
    for i, (batch, (corner, keep)) in enumerate(zip(batches, corners, strict=True)):
        if not keep.any():
            continue
        z = jnp.asarray(batch["latents"])
        for j, t in enumerate(times):
            tt = jnp.full((z.shape[0],), t, jnp.float32)
            x_t = fm.interpolate(z, jax.random.normal(jax.random.key(1000 * i + j), z.shape), tt)
            for audio in (True, False):
                v = apply_fn(params, model_inputs(with_conditions(batch, True, audio), x_t), tt)
                x0 = np.asarray((x_t - t * v)[:, -1])
                sq = (crop(x0, corner) - crop(np.asarray(z[:, -1]), corner)) ** 2
                err[audio].append(sq[keep].mean(axis=(1, 2, 3)))
    return {f"mouth_x0_mse_audio_{'on' if a else 'off'}": float(np.mean(np.concatenate(err[a]))) for a in err}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.audio_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a launch.train workdir (its config names the data)")
    p.add_argument("--batches", type=int, default=150, help="training batches to draw the windows from")
    p.add_argument("--patch", type=int, default=5, help="side of the mouth block, in latent cells")
    p.add_argument("--model", action="store_true", help="also score the checkpoint's EMA model on the block")
    p.add_argument("--model_batches", type=int, default=12, help="of the batches, how many the model scores")
    p.add_argument("--times", default="0.6,0.9", help="comma-separated flow times for --model")
    args = p.parse_args(argv)
    import ml_collections

    from data_pipeline.grain_pipeline import make_train_iterator
    from omnihuman_jax.checkpointing import load_run_config
    from omnihuman_jax.conditions import INDEX

    cfg = ml_collections.ConfigDict(load_run_config(args.checkpoint))
    if not cfg.data.dir:
        raise SystemExit("error: the run trained on synthetic batches; the probe needs its dataset")
    cfg.condition_ratios.audio = 1.0  # every window whose clip passes the lip-sync filter carries audio
    cfg.flow.lip_weight = max(float(cfg.flow.get("lip_weight", 0.0)), 1.0)  # the loader then adds lip_mask
    it = make_train_iterator(cfg)
    batches, corners, feats, change = [], [], [], []
    for _ in range(args.batches):
        batch = {k: v for k, v in next(it).items() if not k.startswith("_")}
        if batch["latents"].shape[1] <= LAST_MOTION + 1:
            raise SystemExit(f"error: clips have {batch['latents'].shape[1]} latent frames; need 3 or more")
        corner, keep = mouth_patches(batch["latents"], batch["lip_mask"], args.patch)
        keep &= np.asarray(batch["condition_mask"][:, INDEX["audio"]], bool)
        batches.append(batch)
        corners.append((corner, keep))
        z = batch["latents"]
        delta = crop(z[:, -1], corner) - crop(z[:, LAST_MOTION], corner)  # (B, k, k, C)
        feats.append(batch["audio_feats"].mean(axis=(2, 3))[keep])  # (B, F) per-video-frame energies
        change.append(delta[keep].reshape(int(keep.sum()), -1))
    windows = int(sum(len(f) for f in feats))
    if windows == 0:
        raise SystemExit(
            "error: no window has both audio and confident mouth landmarks (COCO-WholeBody keypoints 71-90);"
            " the probe needs a dataset featurized with keypoints, and clips that pass the lip-sync filter"
        )
    out = {"checkpoint": args.checkpoint, "windows": windows, "patch": args.patch}
    out.update(linear_probe(np.concatenate(feats), np.concatenate(change)))
    if args.model:
        import jax

        from omnihuman_jax.checkpointing import load_params
        from omnihuman_jax.trainer import build_model

        params, out["step"] = load_params(args.checkpoint, "ema")
        model = build_model(cfg)
        apply_fn = jax.jit(lambda prm, inputs, t: model.apply({"params": prm}, inputs, t))
        n = args.model_batches
        times = [float(t) for t in args.times.split(",")]
        out.update(model_mouth_errors(apply_fn, params, batches[:n], corners[:n], times))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
