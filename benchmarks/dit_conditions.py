"""How much a trained DiT uses its motion frames and its audio (OmniHuman-1 sections 3.2 and 3.4).

On training batches of a checkpoint's own dataset, the last latent frame is the frame to predict. For flow
times t in `--times` the script noises the batch, asks the model for x_0 = x_t - t v with the reference on,
pose and text off, and motion frames (latent frames 0 and 1) and audio each on or off, and reports:

- `x0_mse[motion, audio]`: mean squared error of the predicted last latent frame against the truth;
- `copy_mse`: the error of simply repeating the last motion latent, which any model given motion frames
  should beat;
- `audio_effect`: the largest change audio makes to that prediction (max over positions, mean over
  samples), next to `true_change`, the largest true change from the last motion latent.

A model that ignores its motion frames scores about the same with motion on and off; one that ignores audio
has an `audio_effect` near 0. The loader zeroes the features of a condition it drew as dropped, so only the
samples drawn with audio on carry real audio (about ratio x eligible rate of them); on the others the
audio-on and audio-off rows agree.

  python -m benchmarks.dit_conditions --checkpoint=runs/proof/stage2 --batches=6
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omnihuman_jax import flow_matching as fm
from omnihuman_jax.conditions import INDEX, model_inputs

MOTION_FRAMES = 2  # latent frames 0 and 1 (docs/design.md)


def with_conditions(batch: dict[str, Any], motion: bool, audio: bool) -> dict[str, Any]:
    """The batch with the reference on, text and pose off, and motion frames / audio as asked."""
    cm = np.array(batch["condition_mask"], copy=True)  # (B, 5)
    cm[:, INDEX["reference"]] = True
    cm[:, INDEX["text"]] = cm[:, INDEX["pose"]] = False
    cm[:, INDEX["motion"]] = motion
    cm[:, INDEX["audio"]] = audio
    mm = np.zeros(batch["motion_mask"].shape, bool)  # (B, T)
    mm[:, :MOTION_FRAMES] = motion
    return {**batch, "condition_mask": jnp.asarray(cm), "motion_mask": jnp.asarray(mm)}


def condition_effects(apply_fn, params: Any, batches: list[dict[str, Any]], times: list[float]) -> dict:
    """The figures of the module docstring, averaged over batches and times. apply_fn(params, inputs, t)."""
    err = {(m, a): [] for m in (True, False) for a in (True, False)}
    copy, effect, change = [], [], []
    for i, batch in enumerate(batches):
        z = jnp.asarray(batch["latents"])  # (B, T, h, w, C)
        if z.shape[1] <= MOTION_FRAMES:
            raise ValueError(f"clips have {z.shape[1]} latent frames; need more than {MOTION_FRAMES}")
        target = z[:, -1]  # (B, h, w, C)
        for j, t in enumerate(times):
            tt = jnp.full((z.shape[0],), t, jnp.float32)
            noise = jax.random.normal(jax.random.key(1000 * i + j), z.shape)
            x_t = fm.interpolate(z, noise, tt)
            x0 = {}
            for key in err:
                v = apply_fn(params, model_inputs(with_conditions(batch, *key), x_t), tt)
                x0[key] = (x_t - t * v)[:, -1]
                err[key].append(float(jnp.mean((x0[key] - target) ** 2)))
            effect.append(float(jnp.mean(jnp.max(jnp.abs(x0[True, True] - x0[True, False]), axis=(1, 2, 3)))))
        last_motion = z[:, MOTION_FRAMES - 1]
        copy.append(float(jnp.mean((last_motion - target) ** 2)))
        change.append(float(jnp.mean(jnp.max(jnp.abs(target - last_motion), axis=(1, 2, 3)))))
    name = {True: "on", False: "off"}
    return {
        **{f"x0_mse_motion_{name[m]}_audio_{name[a]}": float(np.mean(v)) for (m, a), v in err.items()},
        "copy_mse": float(np.mean(copy)),
        "audio_effect": float(np.mean(effect)),
        "true_change": float(np.mean(change)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.dit_conditions", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--checkpoint", required=True, help="a launch.train workdir (or step folder)")
    p.add_argument("--batches", type=int, default=6, help="training batches to average over")
    p.add_argument("--times", default="0.3,0.6,0.9", help="comma-separated flow times")
    p.add_argument("--data_dir", default="", help="dataset folder; default: the run config's data.dir")
    args = p.parse_args(argv)
    import ml_collections

    from data_pipeline.grain_pipeline import make_train_iterator
    from omnihuman_jax.checkpointing import load_params, load_run_config
    from omnihuman_jax.trainer import build_model

    cfg = ml_collections.ConfigDict(load_run_config(args.checkpoint))
    if args.data_dir:
        cfg.data.dir = args.data_dir
    if not cfg.data.dir:
        raise SystemExit("error: the run trained on synthetic batches; pass --data_dir=DATASET")
    params, step = load_params(args.checkpoint, "ema")
    model = build_model(cfg)
    apply_fn = jax.jit(lambda prm, inputs, t: model.apply({"params": prm}, inputs, t))
    it = make_train_iterator(cfg)
    batches = [{k: v for k, v in next(it).items() if not k.startswith("_")} for _ in range(args.batches)]
    times = [float(t) for t in args.times.split(",")]
    out = {"checkpoint": args.checkpoint, "step": step, **condition_effects(apply_fn, params, batches, times)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
