"""Toy-world measurement functions on synthetic frames and audio with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipeline.toyworld import measure

H = W = 64
SKIN = (222, 184, 152)


def _frames(num: int, colour=SKIN) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.uint8), (num, H, W, 3)).copy()


def _draw_mouth(frames: np.ndarray, openings: list[int], width: int) -> None:
    for f, h in enumerate(openings):
        frames[f, 30 : 30 + h, 20 : 20 + width] = measure.MOUTH_COLOUR


def test_mouth_opening_equals_drawn_rectangle_height():
    openings = [0, 1, 2, 3, 5, 8]
    frames = _frames(len(openings))
    _draw_mouth(frames, openings, width=9)
    np.testing.assert_allclose(measure.mouth_opening(frames, mouth_width=9), openings, atol=1e-6)


def test_mouth_opening_default_width_follows_frame_width():
    frames = _frames(1)
    width = int(round(measure.mouth_width_px(W)))
    frames[0, 10:14, 5 : 5 + width] = measure.MOUTH_COLOUR
    assert measure.mouth_opening(frames)[0] == pytest.approx(4.0 * width / measure.mouth_width_px(W))


def test_mouth_opening_tolerates_colour_noise_within_near_distance():
    rng = np.random.default_rng(0)
    frames = _frames(3)
    _draw_mouth(frames, [2, 4, 6], width=10)
    noisy = np.clip(frames.astype(int) + rng.integers(-12, 13, frames.shape), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(measure.mouth_opening(noisy, mouth_width=10), [2, 4, 6], atol=0.05)


def test_colour_membership_is_one_near_zero_far_and_linear_between():
    base = np.array(measure.MOUTH_COLOUR, float)
    direction = np.array([0.0, 1.0, 0.0])
    dists = [
        0.0,
        measure.COLOUR_NEAR,
        0.5 * (measure.COLOUR_NEAR + measure.COLOUR_FAR),
        measure.COLOUR_FAR,
        250.0,
    ]
    pixels = np.stack([base + d * direction for d in dists]).astype(np.uint8)[None, None]  # (1, 1, 5, 3)
    np.testing.assert_allclose(
        measure.colour_membership(pixels, measure.MOUTH_COLOUR)[0, 0], [1, 1, 0.5, 0, 0], atol=1e-2
    )


def test_audio_envelope_is_per_frame_rms():
    sr, fps = 16000, 25
    amps = np.array([0.0, 0.5, 0.1, 0.3])
    t = np.arange(sr // fps)
    wav = np.concatenate([a * np.sign(np.sin(2 * np.pi * t / 16 + 0.1)) for a in amps])  # square waves
    np.testing.assert_allclose(measure.audio_envelope(wav, sr, fps, 4), amps, atol=1e-6)


def test_audio_envelope_pads_missing_audio_with_silence_and_averages_channels():
    wav = np.ones((640 + 320, 2)) * np.array([0.2, 0.4])
    env = measure.audio_envelope(wav, 16000, 25, 3)
    np.testing.assert_allclose(env, [0.3, 0.3 * np.sqrt(0.5), 0.0], atol=1e-6)


def _talking(envelope: np.ndarray, lag: int, sr: int = 16000, fps: int = 25):
    """Frames whose mouth follows `envelope` with `lag` frames of delay, and matching audio."""
    openings = np.round(1 + 6 * envelope / envelope.max()).astype(int)
    openings = np.concatenate([np.full(lag, openings[0]), openings[: len(openings) - lag]])
    frames = _frames(len(envelope))
    _draw_mouth(frames, list(openings), width=9)
    spf = sr // fps
    noise = np.random.default_rng(1).standard_normal(len(envelope) * spf)
    wav = np.repeat(envelope, spf) * noise
    return frames, wav


def test_sync_score_high_for_matching_audio_and_low_for_unrelated_audio():
    rng = np.random.default_rng(2)
    env = np.abs(np.convolve(rng.standard_normal(60), np.ones(3) / 3, mode="same"))
    frames, wav = _talking(env, lag=1)
    assert measure.sync_score(frames, wav, 16000, 25) > 0.9
    other = np.abs(np.convolve(rng.standard_normal(60), np.ones(3) / 3, mode="same"))
    _, other_wav = _talking(other, lag=1)
    assert measure.sync_score(frames, other_wav, 16000, 25) < 0.5


def test_lagged_correlation_recovers_the_known_lag():
    rng = np.random.default_rng(3)
    env = rng.random(80)
    for lag in (-2, 0, 1, 2):
        opening = np.roll(env, lag)  # opening[f] = env[f - lag]
        corr, found = measure.lagged_correlation(opening, env, max_lag=2)
        assert found == lag and corr > 0.99, (lag, found, corr)


def test_pearson_of_constant_series_is_zero_not_nan():
    assert measure.pearson(np.ones(10), np.arange(10.0)) == 0.0


def _hand_frames(left: list[tuple[int, int]], right: list[tuple[int, int] | None]) -> np.ndarray:
    frames = _frames(len(left), colour=(70, 95, 160))
    for f, ((lx, ly), r) in enumerate(zip(left, right, strict=True)):
        frames[f, ly - 2 : ly + 2, lx - 2 : lx + 2] = (
            measure.LEFT_HAND_COLOUR
        )  # 4x4 block centred on (lx, ly)
        if r is not None:
            frames[f, r[1] - 3 : r[1] + 3, r[0] - 3 : r[0] + 3] = measure.RIGHT_HAND_COLOUR
    return frames


def test_hand_positions_are_block_centres_in_pixel_centre_coordinates_and_nan_when_absent():
    frames = _hand_frames([(40, 50), (44, 47)], [(20, 52), None])
    pos = measure.hand_positions(frames)
    np.testing.assert_allclose(pos[0], [[40, 50], [20, 52]], atol=1e-6)
    np.testing.assert_allclose(pos[1, 0], [44, 47], atol=1e-6)
    assert np.isnan(pos[1, 1]).all()


def _keypoints_at(centres: np.ndarray) -> np.ndarray:
    """(F, 2, 2) hand centres -> (F, 133, 3) keypoints whose hand keypoints average to them."""
    kp = np.zeros((centres.shape[0], 133, 3), np.float32)
    offsets = np.random.default_rng(4).normal(size=(21, 2))
    offsets -= offsets.mean(axis=0)
    for hand, start in enumerate((91, 112)):
        kp[:, start : start + 21, :2] = centres[:, hand, None] + offsets
        kp[:, start : start + 21, 2] = 0.9
    return kp


def test_pose_error_px_is_zero_for_matching_keypoints_and_equals_a_known_offset():
    frames = _hand_frames([(40, 50), (44, 47)], [(20, 52), (22, 50)])
    centres = np.array([[[40, 50], [20, 52]], [[44, 47], [22, 50]]], float)
    assert measure.pose_error_px(frames, _keypoints_at(centres)) == pytest.approx(0.0, abs=1e-5)
    assert measure.pose_error_px(frames, _keypoints_at(centres + np.array([3.0, 4.0]))) == pytest.approx(
        5.0, abs=1e-5
    )


def test_pose_error_px_skips_low_confidence_keypoints():
    frames = _hand_frames([(40, 50)], [(20, 52)])
    kp = _keypoints_at(np.array([[[40, 50], [30, 30]]], float))
    kp[:, 112:133, 2] = 0.1  # right hand not confidently detected: its wrong position is ignored
    assert measure.pose_error_px(frames, kp) == pytest.approx(0.0, abs=1e-5)
    kp[:, 91:112, 2] = 0.1
    assert np.isnan(measure.pose_error_px(frames, kp))


def test_hands_found_fraction_counts_seen_hands_among_confident_keypoints():
    frames = _hand_frames([(40, 50), (44, 47)], [(20, 52), None])  # right hand gone in frame 1
    kp = _keypoints_at(np.array([[[40, 50], [20, 52]], [[44, 47], [22, 50]]], float))
    assert measure.hands_found_fraction(frames, kp) == pytest.approx(3 / 4)
    kp[1, 112:133, 2] = 0.1  # the missing hand's keypoints are not confident: nothing was expected there
    assert measure.hands_found_fraction(frames, kp) == pytest.approx(1.0)
    kp[..., 2] = 0.0
    assert np.isnan(measure.hands_found_fraction(frames, kp))


def test_motion_amplitude_is_mean_hand_displacement():
    frames = _hand_frames([(30, 40), (33, 44), (33, 44)], [(20, 40), (20, 40), (20, 46)])
    # left moves 5 then 0, right 0 then 6: mean of (5, 0, 0, 6)
    assert measure.motion_amplitude(frames) == pytest.approx(11.0 / 4.0, abs=1e-6)


def test_static_region_psnr_ssim_perfect_for_identical_and_ignores_changes_outside_mask():
    rng = np.random.default_rng(5)
    ref = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    frames = np.stack([ref, ref])
    frames[:, :, 40:] = 0  # changes outside the mask
    mask = np.zeros((H, W), bool)
    mask[:, :30] = True
    psnr, ssim = measure.static_region_psnr_ssim(frames, ref, mask)
    assert psnr == 100.0 and ssim == pytest.approx(1.0, abs=1e-9)


def test_static_region_psnr_matches_the_formula_and_ssim_drops_with_noise():
    rng = np.random.default_rng(6)
    ref = np.full((H, W, 3), 128, np.uint8)
    ref[:, ::4] = 200
    noisy = (ref.astype(int) + rng.choice([-10, 10], ref.shape)).astype(np.uint8)[None]  # MSE exactly 100
    mask = np.ones((H, W), bool)
    psnr, ssim = measure.static_region_psnr_ssim(noisy, ref, mask)
    assert psnr == pytest.approx(10 * np.log10(255.0**2 / 100.0), abs=1e-9)
    assert 0.3 < ssim < 0.99


def test_measure_functions_reject_bad_shapes_with_named_errors():
    with pytest.raises(ValueError, match="frames must be"):
        measure.mouth_opening(np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ValueError, match="keypoints must be"):
        measure.hand_centres_from_keypoints(np.zeros((2, 17, 3)))
    with pytest.raises(ValueError, match="mask selects no pixels"):
        measure.static_region_psnr_ssim(_frames(1), _frames(1)[0], np.zeros((H, W), bool))
    with pytest.raises(ValueError, match="one row per frame"):
        measure.pose_error_px(_frames(2), np.zeros((3, 133, 3)))
