"""Shapes of the training batch (docs/design.md), derived from the config alone."""

from __future__ import annotations

from typing import Any

import numpy as np

from omnihuman_jax.conditions import CONDITIONS


def uses_lip_mask(config: Any) -> bool:
    """True when `flow.lip_weight` > 0: the batch then carries `lip_mask` (B, T, h, w), the mouth region the
    loss weights up. Run configs saved before the key existed have no lip weight."""
    return float(config.get("flow", {}).get("lip_weight", 0.0)) > 0


def batch_shapes(config: Any, batch_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    m, s = config.model, config.shape
    t, h, w = s.latent_frames, s.latent_height, s.latent_width
    f = 1 + 4 * (t - 1)
    hs, ws = h * m.pose_heatmap_scale, w * m.pose_heatmap_scale
    shapes = {
        "latents": ((batch_size, t, h, w, m.latent_channels), np.float32),
        "ref_latents": ((batch_size, 1, h, w, m.latent_channels), np.float32),
        "text_emb": ((batch_size, s.text_len, m.text_dim), np.float32),
        "text_mask": ((batch_size, s.text_len), np.bool_),
        "audio_feats": ((batch_size, f, m.audio_layers, m.audio_dim), np.float32),
        "pose_heatmaps": ((batch_size, f, hs, ws, m.pose_channels), np.float32),
        "motion_mask": ((batch_size, t), np.bool_),
        "condition_mask": ((batch_size, len(CONDITIONS)), np.bool_),
    }
    if uses_lip_mask(config):
        shapes["lip_mask"] = ((batch_size, t, h, w), np.float32)
    if m.pooled_text_dim:
        shapes["text_pooled"] = ((batch_size, m.pooled_text_dim), np.float32)
    if m.guidance_embeds:
        shapes["guidance"] = ((batch_size,), np.float32)
    return shapes


def zeros_batch(config: Any, batch_size: int) -> dict[str, np.ndarray]:
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in batch_shapes(config, batch_size).items()}


def sample_model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """Model inputs of a batch with x_t = latents, for init and shape tracing."""
    from omnihuman_jax.conditions import model_inputs

    return model_inputs(batch, batch["latents"])
