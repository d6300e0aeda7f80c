"""Online VAE encoding for frames-only datasets (docs/design.md: a dataset built without a VAE).

Such a dataset yields `frames` (B, F, H, W, 3) and `ref_frame` (B, 1, H, W, 3) uint8; before the train step
they are encoded with the configured VAE (`config.vae.path`, a diffusers-format folder) into `latents` and
`ref_latents`. Datasets that store latents pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

Batch = dict[str, np.ndarray]


def _to_unit_range(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) / 127.5 - 1.0


def make_batch_preprocessor(config: Any) -> Callable[[Batch], Batch]:
    state: dict[str, Any] = {}

    def encoder():
        if "encode" not in state:
            if not config.vae.path:
                raise ValueError(
                    "the dataset stores frames, not latents: set --config.vae.path to a VAE folder "
                    "(diffusers format) to encode them, or rebuild the dataset with --vae"
                )
            from omnihuman_jax.interop.diffusers_vae import load_vae
            from omnihuman_jax.models.vae import encode_video

            cfg, params = load_vae(config.vae.path)
            state["encode"] = jax.jit(lambda x: encode_video(cfg, params, x))
        return state["encode"]

    def preprocess(batch: Batch) -> Batch:
        if "frames" not in batch:
            return batch
        out = dict(batch)
        encode = encoder()
        out["latents"] = np.asarray(encode(_to_unit_range(out.pop("frames"))))
        out["ref_latents"] = np.asarray(encode(_to_unit_range(out.pop("ref_frame"))))
        return out

    return preprocess
