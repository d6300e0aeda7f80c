"""Per-sample condition masks of the omni-conditions training strategy (OmniHuman-1, section 3.3).

Each training sample activates each condition independently with the stage's training ratio, but only
among the conditions its data supports (Principle 1: data filtered out of the audio and pose tasks still
trains the weaker text and reference tasks). An ineligible condition is never active. Principle 2 (the
stronger the condition, the lower its ratio) is checked by
`omnihuman_jax.config_checks.principle2_warnings` at start-up.

Conditions, in the order of docs/design.md: text, reference, audio, pose, motion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from omnihuman_jax.conditions import CONDITIONS

# Motion-related conditions from weak to strong (section 3.3); motion frames are not in this order.
# Motion frames are latent frames 0 and 1 (docs/design.md); a clip needs at least one more latent frame
# left to predict, so motion frames need 3 latent frames (9 video frames).
MIN_MOTION_LATENT_FRAMES = 3

# Salts keep the random streams of one sample independent of each other.
SALT_MASK = 0
SALT_REFERENCE = 1
SALT_DATA = 2


def sample_rng(seed: int, sample_index: int, salt: int = SALT_MASK) -> np.random.Generator:
    """A generator that depends only on (seed, sample index, salt): the same draw on every host and resume."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(sample_index), int(salt)])


def ratios_vector(ratios: Mapping[str, float]) -> np.ndarray:
    """The (5,) float64 ratios in CONDITIONS order, validated to lie in [0, 1]."""
    missing = [c for c in CONDITIONS if c not in ratios]
    if missing:
        raise ValueError(f"condition_ratios is missing {missing}; it needs all of {list(CONDITIONS)}")
    values = np.array([float(ratios[c]) for c in CONDITIONS])
    bad = [c for c, v in zip(CONDITIONS, values, strict=True) if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"condition_ratios {bad} must lie in [0, 1], got {dict(ratios)}")
    return values


def eligibility(
    *,
    text_mask: np.ndarray,
    audio_eligible: bool,
    pose_eligible: bool,
    latent_frames: int,
) -> np.ndarray:
    """(5,) bool: which conditions a sample can take, in CONDITIONS order.

    Text needs at least one valid token; the reference is always available; audio and pose follow the
    record's eligibility flags; motion frames need `MIN_MOTION_LATENT_FRAMES` latent frames: the two
    motion latent frames plus at least one frame left to predict.
    """
    return np.array(
        [
            bool(np.any(text_mask)),
            True,
            bool(audio_eligible),
            bool(pose_eligible),
            latent_frames >= MIN_MOTION_LATENT_FRAMES,
        ]
    )


def eligibility_from_record(record: Mapping[str, Any], latent_frames: int) -> np.ndarray:
    """`eligibility` of a decoded dataset record."""
    return eligibility(
        text_mask=np.asarray(record["text_mask"]),
        audio_eligible=bool(record["audio_eligible"]),
        pose_eligible=bool(record["pose_eligible"]),
        latent_frames=latent_frames,
    )


def draw_condition_mask(ratios: np.ndarray, eligible: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(5,) bool: condition c is active with probability ratios[c] when eligible, never otherwise.

    All five uniforms are always drawn, so one condition's eligibility does not shift another's draw.
    """
    u = rng.random(len(CONDITIONS))  # (5,)
    return (u < ratios) & eligible


def sample_condition_mask(
    seed: int, sample_index: int, ratios: np.ndarray, eligible: np.ndarray
) -> np.ndarray:
    """The condition mask of one sample, deterministic from (seed, sample index)."""
    return draw_condition_mask(ratios, eligible, sample_rng(seed, sample_index, SALT_MASK))


def motion_latent_frames(motion_frames: int) -> int:
    """Latent frames covering the first `motion_frames` video frames (5 video frames: latent frames 0, 1)."""
    if motion_frames < 1:
        raise ValueError(f"data.motion_frames must be >= 1, got {motion_frames}")
    return 1 + -(-(motion_frames - 1) // 4)


def apply_condition_mask(sample: dict[str, np.ndarray], mask: np.ndarray, motion_frames: int) -> None:
    """Set `motion_mask` and zero every dropped condition of one sample, in place.

    `sample` holds unbatched arrays: text_emb (L, D), text_mask (L,), optional text_pooled (D_pool,),
    ref_latents (1, h, w, C) or ref_frame (1, H, W, 3), audio_feats (F, L_a, D_a), pose_heatmaps
    (F, H', W', K) and motion_mask (T,). A dropped text keeps only its first token valid: the model's
    null text (docs/design.md).
    """
    text, reference, audio, pose, motion = (bool(m) for m in mask)
    if not text:
        sample["text_emb"][...] = 0
        sample["text_mask"][...] = False
        sample["text_mask"][:1] = True
        if "text_pooled" in sample:
            sample["text_pooled"][...] = 0
    if not reference:
        for key in ("ref_latents", "ref_frame"):
            if key in sample:
                sample[key][...] = 0
    if not audio:
        sample["audio_feats"][...] = 0
    if not pose:
        sample["pose_heatmaps"][...] = 0
    sample["motion_mask"][...] = False
    if motion:
        sample["motion_mask"][: motion_latent_frames(motion_frames)] = True
