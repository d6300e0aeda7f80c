"""Shapes of the training batch (docs/design.md), derived from the config alone."""

from __future__ import annotations

from typing import Any

import numpy as np

from omnihuman_jax.conditions import CONDITIONS

# Landmark regions the flow loss can weight up: batch key -> the `flow` weight that turns it on. Each mask is
# (B, T, h, w) on the latent grid, rasterised from the clip's keypoints by the data pipeline.
REGION_MASKS: dict[str, str] = {"lip_mask": "lip_weight", "hand_mask": "hand_weight"}


def region_weights(config: Any) -> dict[str, float]:
    """Batch key -> loss weight of each landmark region mask in use (weight > 0). Run configs saved before a
    weight existed have none."""
    flow = config.get("flow", {})
    weights = {key: float(flow.get(name, 0.0)) for key, name in REGION_MASKS.items()}
    return {key: w for key, w in weights.items() if w > 0}


# The audio gate's region (model.audio_gate), (B, T, h, w) on the latent grid: the mouth landmarks' region.
AUDIO_REGION = "audio_region"


def landmark_mask_keys(config: Any) -> tuple[str, ...]:
    """Batch keys of every landmark mask the run needs: the loss's weighted regions and the audio region."""
    gate = bool(config.get("model", {}).get("audio_gate", False))
    return tuple(region_weights(config)) + ((AUDIO_REGION,) if gate else ())


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
    for key in landmark_mask_keys(config):
        shapes[key] = ((batch_size, t, h, w), np.float32)
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
