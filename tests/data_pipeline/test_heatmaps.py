"""Pose heatmaps (shape, blobs, confidence weighting, parity with a per-pixel loop) and the mouth mask."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipeline import heatmaps
from data_pipeline.heatmaps import GROUPS, NUM_CHANNELS, render_heatmaps


def _channel_of(k: int) -> int:
    if k < 17:
        return k
    return next(17 + g for g, (_, start, stop) in enumerate(GROUPS) if start <= k < stop)


def _reference_render(kp: np.ndarray, h: int, w: int, sigma: float) -> np.ndarray:
    """Plain loop: each keypoint adds conf * exp(-d^2 / 2 sigma^2) to its channel, then clip."""
    out = np.zeros((kp.shape[0], h, w, NUM_CHANNELS), np.float64)
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    for f in range(kp.shape[0]):
        for k in range(kp.shape[1]):
            x, y, c = kp[f, k]
            d2 = (xx - x * w) ** 2 + (yy - y * h) ** 2
            out[f, :, :, _channel_of(k)] += max(c, 0.0) * np.exp(-d2 / (2 * sigma**2))
    return np.clip(out, 0, 1)


def test_render_heatmaps_vs_reference():
    rng = np.random.default_rng(0)
    kp = rng.random((2, 133, 3)).astype(np.float32)
    got = render_heatmaps(kp, 12, 10, sigma=1.5)
    want = _reference_render(kp.astype(np.float64), 12, 10, 1.5)
    err = np.abs(got - want).max()
    assert got.shape == (2, 12, 10, 21) and got.dtype == np.float32
    assert err < 1e-5, f"max error {err}"


def test_blob_peaks_at_keypoint_and_scales_with_confidence():
    kp = np.zeros((1, 133, 3), np.float32)
    kp[0, 5] = (0.25, 0.75, 0.6)  # body joint 5 at pixel column 2 (of 8), row 12 (of 16), conf 0.6
    hm = render_heatmaps(kp, 16, 8, sigma=1.0)
    ch = hm[0, :, :, 5]
    assert np.unravel_index(ch.argmax(), ch.shape) in {(11, 1), (11, 2), (12, 1), (12, 2)}
    assert ch.max() <= 0.6 + 1e-6 and ch.max() > 0.3
    others = np.delete(hm[0], 5, axis=-1)
    assert others.max() == 0.0, "a zero-confidence keypoint drew a blob"


def test_right_hand_points_land_in_last_channel_and_nan_is_absent():
    kp = np.zeros((1, 133, 3), np.float32)
    kp[0, 120] = (0.5, 0.5, 1.0)
    kp[0, 0] = (np.nan, 0.5, 1.0)
    hm = render_heatmaps(kp, 8, 8)
    assert hm[0, ..., 20].max() > 0.5
    assert hm[0, ..., :20].max() == 0.0
    assert np.all(np.isfinite(hm))


def test_render_heatmaps_rejects_wrong_keypoint_shape():
    with pytest.raises(ValueError, match="133"):
        render_heatmaps(np.zeros((2, 17, 3)), 8, 8)


def test_mouth_mask_covers_the_lip_landmarks_box_per_latent_frame():
    kp = np.zeros((5, 133, 3), np.float32)  # 5 video frames = latent frames 0 and 1
    kp[:, 71:91, 0] = np.linspace(0.40, 0.52, 20)  # x 6.4 .. 8.32 cells on a 16-wide grid
    kp[:, 71:91, 1] = 0.6  # y 9.6 cells
    kp[:, 71:91, 2] = 1.0
    kp[3, 71:91, 1] = np.linspace(0.55, 0.70, 20)  # frame 3 (latent frame 1) opens to y 8.8 .. 11.2
    kp[:, :71, :2] = 0.05  # other landmarks far away, confident: ignored
    kp[:, :71, 2] = 1.0
    m = heatmaps.mouth_mask(kp, 16, 16)  # margin 0.5 cell
    assert m.shape == (2, 16, 16) and m.dtype == np.float32
    want0 = np.zeros((16, 16), np.float32)
    want0[9:11, 5:9] = 1.0  # x 5.9 .. 8.82, y 9.1 .. 10.1
    np.testing.assert_array_equal(m[0], want0)
    want1 = np.zeros((16, 16), np.float32)
    want1[8:12, 5:9] = 1.0  # the union over frames 1-4 includes frame 3's open mouth (y 8.3 .. 11.7)
    np.testing.assert_array_equal(m[1], want1)


def test_mouth_mask_ignores_unconfident_or_missing_landmarks():
    kp = np.zeros((1, 133, 3), np.float32)
    kp[0, 71:91, :2] = 0.5
    kp[0, 71:91, 2] = 0.1  # below the confidence threshold
    assert not heatmaps.mouth_mask(kp, 8, 8).any()
    kp[0, 71, 2] = 1.0  # one landmark is not a mouth
    kp[0, 72:91, 0] = np.nan
    assert not heatmaps.mouth_mask(kp, 8, 8).any()
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        heatmaps.mouth_mask(np.zeros((3, 133, 3), np.float32), 8, 8)


def test_landmark_regions_are_one_box_per_mouth_and_hand_per_frame():
    kp = np.zeros((2, 133, 3), np.float32)
    kp[:, :, 2] = 1.0
    kp[:, :71, :2] = 0.5  # body and face landmarks (not the mouth): in no region
    kp[:, 71:91, :2] = (0.25, 0.25)
    kp[:, 71:91, 0] += np.linspace(0.0, 0.125, 20)  # mouth: x 8 .. 12 px, y 8 px on a 32 x 32 frame
    kp[:, 91:112, :2] = (0.75, 0.75)  # left hand: one point at (24, 24) px
    kp[:, 91:112, 0] += np.linspace(0.0, 0.0625, 21)  # ... spread to x 24 .. 26 px
    kp[:, 112:133, 2] = 0.0  # right hand not detected: no box
    kp[1, 91:112, 2] = 0.0  # in frame 1 the left hand is gone too
    m = heatmaps.landmark_regions(kp, 32, 32, margin=1.0)
    assert m.shape == (2, 32, 32) and m.dtype == np.float32
    want = np.zeros((2, 32, 32), np.float32)
    want[:, 7:9, 7:13] = 1.0  # mouth box x 7 .. 13, y 7 .. 9 (pixels [j, j+1) meeting it)
    want[0, 23:25, 23:27] = 1.0  # left-hand box x 23 .. 27, y 23 .. 25
    np.testing.assert_array_equal(m, want)


def test_hand_mask_is_one_box_per_hand_per_latent_frame():
    kp = np.zeros((5, 133, 3), np.float32)  # 5 video frames = latent frames 0 and 1
    kp[:, 91:112, :2] = (0.25, 0.75)  # left hand at cell (4, 12) of a 16 x 16 grid
    kp[:, 112:133, :2] = (0.75, 0.75)  # right hand at cell (12, 12)
    kp[:, 91:133, 2] = 1.0
    kp[:, 71:91, :2], kp[:, 71:91, 2] = 0.5, 1.0  # the mouth: not a hand
    kp[2, 112:133, 0] = 0.875  # frame 2 (latent frame 1) moves the right hand to cell 14
    m = heatmaps.hand_mask(kp, 16, 16)  # margin 0.5 cell
    want = np.zeros((2, 16, 16), np.float32)
    want[:, 11:13, 3:5] = want[:, 11:13, 11:13] = 1.0  # boxes x 3.5 .. 4.5 and 11.5 .. 12.5
    want[1, 11:13, 13:15] = 1.0  # latent frame 1 also covers frame 2's right hand
    np.testing.assert_array_equal(m, want)
