"""Condition masks: ratios, eligibility, determinism and the Principle 2 check."""

from __future__ import annotations

import numpy as np
import pytest

from configs.base import STAGE_RATIOS
from data_pipeline import masking

N_DRAWS = 2000


def _random_eligibility(rng: np.random.Generator) -> np.ndarray:
    text_mask = rng.random(4) < 0.8
    return masking.eligibility(
        text_mask=text_mask,
        audio_eligible=bool(rng.random() < 0.6),
        pose_eligible=bool(rng.random() < 0.4),
        latent_frames=int(rng.integers(1, 4)),
    )


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_mask_frequencies_match_ratios_within_4_sigma_and_respect_eligibility(stage):
    ratios = masking.ratios_vector(STAGE_RATIOS[stage])
    rng = np.random.default_rng(123)
    eligible = np.stack([_random_eligibility(rng) for _ in range(N_DRAWS)])  # (N, 5)
    masks = np.stack(
        [masking.sample_condition_mask(7, i, ratios, eligible[i]) for i in range(N_DRAWS)]
    )  # (N, 5)
    assert not np.any(masks & ~eligible), "an ineligible condition was active"
    for c, name in enumerate(masking.CONDITIONS):
        n = int(eligible[:, c].sum())
        assert n > 100, f"test setup: too few {name}-eligible draws ({n})"
        freq = masks[eligible[:, c], c].mean()
        p = ratios[c]
        sigma = np.sqrt(p * (1 - p) / n)
        assert abs(freq - p) <= 4 * sigma + 1e-12, (
            f"{name}: frequency {freq:.4f} vs ratio {p} (sigma {sigma:.4f})"
        )


def test_mask_is_deterministic_from_seed_and_sample_index():
    ratios = masking.ratios_vector(STAGE_RATIOS[3])
    eligible = np.ones(5, bool)
    a = [masking.sample_condition_mask(3, i, ratios, eligible) for i in range(200)]
    b = [masking.sample_condition_mask(3, i, ratios, eligible) for i in range(200)]
    c = [masking.sample_condition_mask(4, i, ratios, eligible) for i in range(200)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True)), "seed has no effect"


def test_eligibility_rules_for_text_motion_and_flags():
    e = masking.eligibility(
        text_mask=np.zeros(3, bool), audio_eligible=True, pose_eligible=False, latent_frames=1
    )
    assert e.tolist() == [False, True, True, False, False]
    e = masking.eligibility(
        text_mask=np.array([True]), audio_eligible=False, pose_eligible=True, latent_frames=3
    )
    assert e.tolist() == [True, True, False, True, True]


def test_motion_needs_a_latent_frame_left_to_predict():
    # Motion frames are latent frames 0 and 1: with only 2 latent frames nothing would be predicted.
    assert masking.motion_latent_frames(5) == 2
    for latent_frames, ok in [(1, False), (2, False), (3, True), (4, True)]:
        e = masking.eligibility(
            text_mask=np.ones(1, bool),
            audio_eligible=True,
            pose_eligible=True,
            latent_frames=latent_frames,
        )
        assert bool(e[4]) is ok, f"latent_frames={latent_frames}: motion eligible {bool(e[4])}"
    assert masking.MIN_MOTION_LATENT_FRAMES == masking.motion_latent_frames(5) + 1


def test_ratios_vector_rejects_missing_and_out_of_range_ratios():
    with pytest.raises(ValueError, match="missing"):
        masking.ratios_vector(dict(text=0.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        masking.ratios_vector(dict(text=1.5, reference=0.7, audio=0.5, pose=0.5, motion=0.3))


def test_principle2_warnings_flag_stronger_condition_with_higher_ratio():
    from omnihuman_jax.config_checks import principle2_warnings

    for stage in (1, 2, 3):
        assert principle2_warnings(STAGE_RATIOS[stage]) == []
    bad = dict(text=0.9, reference=0.3, audio=0.5, pose=0.8, motion=0.3)
    warnings = principle2_warnings(bad)
    joined = "\n".join(warnings)
    assert "audio ratio 0.5 exceeds the weaker reference ratio 0.3" in joined
    assert "pose ratio 0.8 exceeds the weaker audio ratio 0.5" in joined
    assert "pose ratio 0.8 exceeds the weaker reference ratio 0.3" in joined
    assert len(warnings) == 3
