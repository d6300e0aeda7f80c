"""Condition masks and null inputs of the omni-conditions design (OmniHuman-1, sections 3.2 to 3.4).

A per-sample boolean mask drops each condition: text becomes a null embedding (zeros, only the first token
valid), audio and pose become zeros, the reference's tokens are masked out of attention, and motion frames
lose their mask. The same masks drive classifier-free guidance at inference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CONDITIONS = ("text", "reference", "audio", "pose", "motion")
INDEX = {name: i for i, name in enumerate(CONDITIONS)}


def active(condition_mask: jax.Array, name: str) -> jax.Array:
    """(B, 5) -> (B,) bool for one condition."""
    return condition_mask[:, INDEX[name]]


def _where_batch(keep: jax.Array, x: jax.Array, null: jax.Array | float = 0.0) -> jax.Array:
    keep = keep.reshape(keep.shape + (1,) * (x.ndim - 1))
    return jnp.where(keep, x, jnp.asarray(null, x.dtype))


def null_text_mask(text_mask: jax.Array) -> jax.Array:
    """The null prompt: only the first token is valid."""
    return jnp.zeros_like(text_mask).at[:, 0].set(True)


def apply_condition_mask(inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Replaces each dropped condition by its null input; adds `reference_active` (B,) for attention."""
    m = inputs["condition_mask"].astype(bool)
    out = dict(inputs)
    text_on = active(m, "text")
    out["text_emb"] = _where_batch(text_on, inputs["text_emb"])
    out["text_mask"] = jnp.where(text_on[:, None], inputs["text_mask"], null_text_mask(inputs["text_mask"]))
    if "text_pooled" in inputs:
        out["text_pooled"] = _where_batch(text_on, inputs["text_pooled"])
    out["audio_feats"] = _where_batch(active(m, "audio"), inputs["audio_feats"])
    out["pose_heatmaps"] = _where_batch(active(m, "pose"), inputs["pose_heatmaps"])
    out["motion_mask"] = inputs["motion_mask"].astype(bool) & active(m, "motion")[:, None]
    out["reference_active"] = active(m, "reference")
    return out


def model_inputs(batch: dict[str, jax.Array], noisy_latents: jax.Array) -> dict[str, jax.Array]:
    """Training-batch dict -> model inputs: motion latents are the clean latents at motion frames."""
    keys = (
        "ref_latents",
        "text_emb",
        "text_mask",
        "audio_feats",
        "pose_heatmaps",
        "motion_mask",
        "condition_mask",
        "text_pooled",
        "guidance",
        "audio_region",
    )
    inputs = {k: batch[k] for k in keys if k in batch}
    motion = batch["motion_mask"].astype(batch["latents"].dtype)[:, :, None, None, None]
    inputs["motion_latents"] = batch["latents"] * motion
    inputs["noisy_latents"] = noisy_latents
    return inputs
