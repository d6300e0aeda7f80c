"""Measurements of toy-world videos: lip sync, hand pose, identity and motion, read from pixels.

The toy world (see `data_pipeline/toyworld/__init__.py`) draws the mouth interior and the two hands in
colours reserved for them and used nowhere else, so the quantities the OmniHuman-1 paper evaluates
(section 4.1: Sync-C for lip sync, HKC/HKV for hand quality and motion, FID/FVD and identity
preservation for appearance) have exact, cheap stand-ins here:

- `sync_score`: Pearson correlation between the measured mouth opening and the audio envelope.
- `pose_error_px`: mean distance between measured hand centres and the driving keypoints' hand centres.
- `motion_amplitude`: mean frame-to-frame hand displacement (an HKV-like motion richness).
- `static_region_psnr_ssim`: appearance kept on a region that should not change (identity).

Pure numpy. Lossy mp4 colours are tolerated by a soft colour membership: a pixel within
`COLOUR_NEAR` (RGB Euclidean distance) of a reserved colour counts 1, beyond `COLOUR_FAR` counts 0,
and linearly in between.

Coordinates: continuous image coordinates, pixel (row i, column j) spans [j, j + 1) x [i, i + 1), so
its centre is (j + 0.5, i + 0.5) and x / width lies in [0, 1] (the manifest keypoint convention that
`data_pipeline.media` normalizes). Hands are the person's own left and right, in COCO-WholeBody order
(left hand keypoints 91..111, right hand 112..132); a front-facing person's left hand is on the image's
right.
"""

from __future__ import annotations

import numpy as np

# Reserved colours (RGB). The toy-world palettes keep every colour, and every mix of two palette
# colours, farther than COLOUR_FAR from each of these.
MOUTH_COLOUR = (255, 0, 255)  # magenta: the open mouth's interior
LEFT_HAND_COLOUR = (0, 255, 0)  # green: the person's left hand
RIGHT_HAND_COLOUR = (0, 255, 255)  # cyan: the person's right hand
RESERVED_COLOURS = (MOUTH_COLOUR, LEFT_HAND_COLOUR, RIGHT_HAND_COLOUR)
COLOUR_NEAR = 40.0  # RGB distance at or below which a pixel fully belongs to a reserved colour
COLOUR_FAR = 150.0  # RGB distance at or beyond which it does not belong at all

MOUTH_WIDTH_FRACTION = 0.14  # the mouth is this fraction of the frame width wide
MIN_HAND_AREA_PX = 3.0  # less reserved-colour mass than this (in pixels) means the hand is not seen
KEYPOINT_CONFIDENCE_VISIBLE = 0.3  # keypoints at or above this confidence count as visible
LEFT_HAND_KEYPOINTS = slice(91, 112)  # COCO-WholeBody 133: 21 left-hand keypoints
RIGHT_HAND_KEYPOINTS = slice(112, 133)  # 21 right-hand keypoints
DEFAULT_MAX_LAG = 2  # video frames searched either side by `sync_score`


def _check_frames(frames: np.ndarray, name: str = "frames") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{name} must be (F, H, W, 3) RGB, got shape {frames.shape}; add a frame axis")
    return frames


def mouth_width_px(width: int) -> float:
    """The toy world's mouth width in pixels for a frame `width` pixels wide."""
    return MOUTH_WIDTH_FRACTION * width


def colour_membership(frames: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Soft membership in [0, 1] of each pixel in a reserved colour. (F, H, W, 3) -> (F, H, W)."""
    frames = _check_frames(frames)
    diff = frames.astype(np.float32) - np.asarray(colour, np.float32)
    dist = np.sqrt(np.sum(diff * diff, axis=-1))  # (F, H, W)
    return np.clip((COLOUR_FAR - dist) / (COLOUR_FAR - COLOUR_NEAR), 0.0, 1.0)


def mouth_opening(frames: np.ndarray, mouth_width: float | None = None) -> np.ndarray:
    """Mouth opening in pixels per frame: reserved-colour area / mouth width. (F, H, W, 3) -> (F,).

    `mouth_width` defaults to the toy world's `mouth_width_px(W)`. Exact on clean frames; after lossy
    yuv420p coding the blurred mouth edges count only partly, so it reads about 1-2 px low at 64x64
    (a near-constant offset: correlations such as `sync_score` are unaffected).
    """
    frames = _check_frames(frames)
    width = mouth_width_px(frames.shape[2]) if mouth_width is None else float(mouth_width)
    if width <= 0:
        raise ValueError(f"mouth_width must be positive, got {width}")
    area = colour_membership(frames, MOUTH_COLOUR).sum(axis=(1, 2))  # (F,)
    return (area / width).astype(np.float64)


def audio_envelope(wav: np.ndarray, sr: int, fps: float, num_frames: int) -> np.ndarray:
    """RMS amplitude of the audio under each video frame: frame f covers [f / fps, (f + 1) / fps).

    wav: (N,) or (N, C) (channels are averaged). Audio missing at the end counts as silence.
    Returns (num_frames,) float64.
    """
    wav = np.asarray(wav, dtype=np.float64)
    if wav.ndim == 2:
        wav = wav.mean(axis=1)
    if wav.ndim != 1:
        raise ValueError(f"wav must be (N,) or (N, C), got shape {wav.shape}")
    if sr <= 0 or fps <= 0 or num_frames < 0:
        raise ValueError(f"need sr > 0, fps > 0, num_frames >= 0; got {sr}, {fps}, {num_frames}")
    edges = np.round(np.arange(num_frames + 1) * (sr / fps)).astype(np.int64)
    padded = np.zeros(max(int(edges[-1]), wav.shape[0]), np.float64)
    padded[: wav.shape[0]] = wav
    cumsum = np.concatenate([[0.0], np.cumsum(padded * padded)])
    counts = np.maximum(edges[1:] - edges[:-1], 1)
    return np.sqrt((cumsum[edges[1:]] - cumsum[edges[:-1]]) / counts)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 1-D series; 0.0 when either is constant (no signal, no sync)."""
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / denom) if denom > 1e-12 else 0.0


def lagged_correlation(
    opening: np.ndarray, envelope: np.ndarray, max_lag: int = DEFAULT_MAX_LAG
) -> tuple[float, int]:
    """Best Pearson correlation of opening[f] with envelope[f - lag] over lag in [-max_lag, max_lag].

    A positive lag means the mouth follows the audio. Returns (correlation, lag).
    """
    opening = np.asarray(opening, np.float64)
    envelope = np.asarray(envelope, np.float64)
    if opening.shape != envelope.shape or opening.ndim != 1:
        raise ValueError(f"opening {opening.shape} and envelope {envelope.shape} must be equal 1-D shapes")
    best = (-np.inf, 0)
    n = opening.shape[0]
    for lag in range(-max_lag, max_lag + 1):
        if n - abs(lag) < 3:
            continue
        o = opening[lag:] if lag >= 0 else opening[: n + lag]
        e = envelope[: n - lag] if lag >= 0 else envelope[-lag:]
        corr = pearson(o, e)
        if corr > best[0]:
            best = (corr, lag)
    if not np.isfinite(best[0]):
        raise ValueError(f"need at least {2 * max_lag + 3} frames to correlate, got {n}")
    return best


def sync_score(
    frames: np.ndarray, wav: np.ndarray, sr: int, fps: float, max_lag: int = DEFAULT_MAX_LAG
) -> float:
    """Lip sync: Pearson correlation of `mouth_opening(frames)` with `audio_envelope`, best lag.

    The toy world's mouth follows the audio by a fixed 1-frame lag; rather than hard-coding it, the
    best correlation over lags in [-max_lag, max_lag] video frames is returned (Sync-C likewise takes
    the best offset). Audio shifted further than `max_lag` frames scores low.
    """
    frames = _check_frames(frames)
    envelope = audio_envelope(wav, sr, fps, frames.shape[0])
    return lagged_correlation(mouth_opening(frames), envelope, max_lag)[0]


def hand_positions(frames: np.ndarray) -> np.ndarray:
    """Centre (x, y) of each hand's reserved colour. (F, H, W, 3) -> (F, 2, 2), hands (left, right).

    NaN where a hand shows less than `MIN_HAND_AREA_PX` of its colour.
    """
    frames = _check_frames(frames)
    _, h, w, _ = frames.shape
    xs = np.arange(w, dtype=np.float64) + 0.5
    ys = np.arange(h, dtype=np.float64) + 0.5
    out = np.full((frames.shape[0], 2, 2), np.nan)
    for hand, colour in enumerate((LEFT_HAND_COLOUR, RIGHT_HAND_COLOUR)):
        m = colour_membership(frames, colour).astype(np.float64)  # (F, H, W)
        mass = m.sum(axis=(1, 2))
        seen = mass >= MIN_HAND_AREA_PX
        safe = np.where(seen, mass, 1.0)
        out[:, hand, 0] = np.where(seen, (m.sum(axis=1) @ xs) / safe, np.nan)
        out[:, hand, 1] = np.where(seen, (m.sum(axis=2) @ ys) / safe, np.nan)
    return out


def hand_centres_from_keypoints(
    keypoints: np.ndarray, min_confidence: float = KEYPOINT_CONFIDENCE_VISIBLE
) -> np.ndarray:
    """Mean of each hand's confident keypoints. (F, 133, 3) -> (F, 2, 2), hands (left, right); NaN if none."""
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (133, 3):
        raise ValueError(f"keypoints must be (F, 133, 3) COCO-WholeBody (x, y, conf), got {keypoints.shape}")
    out = np.full((keypoints.shape[0], 2, 2), np.nan)
    for hand, sl in enumerate((LEFT_HAND_KEYPOINTS, RIGHT_HAND_KEYPOINTS)):
        pts = keypoints[:, sl]  # (F, 21, 3)
        ok = pts[..., 2] >= min_confidence  # (F, 21)
        count = ok.sum(axis=1)
        safe = np.maximum(count, 1)[:, None]
        centre = (pts[..., :2] * ok[..., None]).sum(axis=1) / safe  # (F, 2)
        out[:, hand] = np.where(count[:, None] > 0, centre, np.nan)
    return out


def pose_error_px(frames: np.ndarray, keypoints: np.ndarray) -> float:
    """Mean pixel distance between measured hand centres and the keypoints' hand centres.

    Averages over (frame, hand) pairs where both the hand is seen and its keypoints are confident;
    NaN when there is no such pair. frames (F, H, W, 3), keypoints (F, 133, 3) in pixels.
    """
    frames = _check_frames(frames)
    keypoints = np.asarray(keypoints)
    if keypoints.shape[:1] != frames.shape[:1]:
        raise ValueError(f"keypoints {keypoints.shape} need one row per frame of frames {frames.shape}")
    err = np.linalg.norm(hand_positions(frames) - hand_centres_from_keypoints(keypoints), axis=-1)  # (F, 2)
    valid = np.isfinite(err)
    return float(err[valid].mean()) if valid.any() else float("nan")


def hands_found_fraction(frames: np.ndarray, keypoints: np.ndarray) -> float:
    """Share of the (frame, hand) pairs with confident keypoints whose hand shows in the frames.

    `pose_error_px` averages only over the pairs where the hand is seen, so a video whose hands vanish
    can still score a small error; this is the share it was measured on. NaN when no keypoint is confident.
    """
    frames = _check_frames(frames)
    keypoints = np.asarray(keypoints)
    if keypoints.shape[:1] != frames.shape[:1]:
        raise ValueError(f"keypoints {keypoints.shape} need one row per frame of frames {frames.shape}")
    expected = np.all(np.isfinite(hand_centres_from_keypoints(keypoints)), axis=-1)  # (F, 2)
    seen = np.all(np.isfinite(hand_positions(frames)), axis=-1)  # (F, 2)
    return float((seen & expected).sum() / expected.sum()) if expected.any() else float("nan")


def displacement_amplitude(positions: np.ndarray) -> float:
    """Mean frame-to-frame displacement of tracked points (F, P, 2); NaN pairs skipped, 0.0 if none."""
    positions = np.asarray(positions, np.float64)
    step = np.linalg.norm(positions[1:] - positions[:-1], axis=-1)  # (F - 1, P)
    valid = np.isfinite(step)
    return float(step[valid].mean()) if valid.any() else 0.0


def motion_amplitude(frames: np.ndarray) -> float:
    """Mean frame-to-frame displacement of the measured hand centres, in pixels."""
    return displacement_amplitude(hand_positions(frames))


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over a k x k window (valid part, edges replicated) of the last two axes: (..., H, W)."""
    pad = k // 2
    x = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(pad, pad), (pad, pad)], mode="edge")
    c = np.cumsum(np.cumsum(x, axis=-1), axis=-2)
    c = np.pad(c, [(0, 0)] * (x.ndim - 2) + [(1, 0), (1, 0)])
    s = c[..., k:, k:] - c[..., :-k, k:] - c[..., k:, :-k] + c[..., :-k, :-k]
    return s / (k * k)


def static_region_psnr_ssim(
    frames: np.ndarray, reference: np.ndarray, mask: np.ndarray, window: int = 7
) -> tuple[float, float]:
    """PSNR (dB) and SSIM of each frame against `reference` on the pixels where `mask` is true.

    frames (F, H, W, 3) uint8, reference (H, W, 3) uint8, mask (H, W) bool. SSIM uses a `window` x
    `window` box window per channel (constants K1 = 0.01, K2 = 0.03, L = 255), with pixels outside the
    mask taken from the reference so only masked pixels can differ, and averages the SSIM map over
    masked pixels; PSNR uses the masked mean squared error per frame. Both are averaged over
    frames; a frame equal to the reference on the mask scores PSNR 100 dB.
    """
    frames = _check_frames(frames).astype(np.float64)
    reference = np.asarray(reference, np.float64)
    mask = np.asarray(mask, bool)
    if reference.shape != frames.shape[1:] or mask.shape != frames.shape[1:3]:
        raise ValueError(
            f"reference {reference.shape} must be (H, W, 3) and mask {mask.shape} (H, W) "
            f"for frames {frames.shape}"
        )
    if not mask.any():
        raise ValueError("mask selects no pixels; give a mask with at least one true pixel")
    mse = ((frames - reference) ** 2)[:, mask].mean(axis=(1, 2))  # (F,)
    psnr = np.where(mse > 0, 10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-12)), 100.0)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    frames = np.where(mask[None, :, :, None], frames, reference[None])  # outside the mask counts as equal
    x = np.moveaxis(frames, -1, 1)  # (F, 3, H, W)
    y = np.broadcast_to(np.moveaxis(reference, -1, 0), x.shape)
    mx, my = _box_mean(x, window), _box_mean(y, window)
    vx = _box_mean(x * x, window) - mx * mx
    vy = _box_mean(y * y, window) - my * my
    cxy = _box_mean(x * y, window) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    ssim = ssim_map.mean(axis=1)[:, mask].mean(axis=1)  # (F,)
    return float(np.mean(psnr)), float(np.mean(ssim))
