"""Online VAE encoding for frames-only datasets (docs/design.md: a dataset built without a VAE).

Such a dataset yields `frames` (B, F, H, W, 3) and `ref_frame` (B, 1, H, W, 3) uint8; before the train step
they are encoded with the configured VAE (`config.vae.path`, a diffusers-format folder) into `latents` and
`ref_latents` (OmniHuman-1 section 3.1: video and reference frame go through the same causal 3D VAE; the
reference frame is a single-frame encode). Datasets that store latents pass through unchanged.

The VAE params are an argument of the jitted encoder, never closed over: closed-over arrays become constants
of the compiled program, which for a real VAE (hundreds of MB) makes compiles slow and cache entries huge.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

Batch = dict[str, np.ndarray]
REFERENCE = 1  # index of the reference condition in CONDITIONS (omnihuman_jax.conditions)


def _to_unit_range(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 in [-1, 1], the VAE's input range."""
    return frames.astype(np.float32) / 127.5 - 1.0


class _Encoder:
    """The configured VAE, loaded on first use, with one jitted encode over (params, frames)."""

    def __init__(self, path: str, chunk_frames: int | None, spatial_ratio: int):
        if not path:
            raise ValueError(
                "the dataset stores frames, not latents: set --config.vae.path to a VAE folder "
                "(diffusers format) to encode them, or rebuild the dataset with --vae"
            )
        from omnihuman_jax.interop.diffusers_vae import load_vae
        from omnihuman_jax.models.vae import encode_video

        self.cfg, self.params = load_vae(path)
        if self.cfg.spatial_compression_ratio != spatial_ratio:
            raise ValueError(
                f"vae.path {path} compresses {self.cfg.spatial_compression_ratio}x spatially but "
                f"vae.spatial_compression_ratio={spatial_ratio} (the pose heatmaps are sized by it); "
                "set it to the VAE's ratio"
            )
        encode = functools.partial(encode_video, self.cfg, chunk_frames=chunk_frames)
        # Chunked encoding loops in Python (bounded memory per chunk), so only the whole-clip path is jitted.
        self._encode = encode if chunk_frames else jax.jit(encode)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(B, F, H, W, 3) uint8 -> (B, T, h, w, C) float32 scaled latents."""
        return np.asarray(self._encode(self.params, _to_unit_range(frames)))


def make_batch_preprocessor(config: Any) -> Callable[[Batch], Batch]:
    """batch -> batch with `latents` / `ref_latents` in place of `frames` / `ref_frame`.

    A dropped reference (condition_mask[:, 1] False) gets zero latents, as a data source zeroes what it
    drops (docs/design.md): the encode of its zeroed frame is not zero.
    """
    state: dict[str, _Encoder] = {}
    chunk_frames = config.vae.get("chunk_frames", None) or None

    def preprocess(batch: Batch) -> Batch:
        if "frames" not in batch:
            return batch
        if "encoder" not in state:
            ratio = int(config.vae.get("spatial_compression_ratio", 8))
            state["encoder"] = _Encoder(config.vae.path, chunk_frames, ratio)
        encode = state["encoder"]
        out = dict(batch)
        out["latents"] = encode(out.pop("frames"))  # (B, T, h, w, C)
        ref_latents = encode(out.pop("ref_frame"))  # (B, 1, h, w, C)
        if "condition_mask" in out:
            keep = np.asarray(out["condition_mask"])[:, REFERENCE]  # (B,)
            ref_latents = np.where(keep[:, None, None, None, None], ref_latents, 0).astype(np.float32)
        out["ref_latents"] = ref_latents
        return out

    return preprocess
