"""Pose heatmaps for the pose condition (OmniHuman-1, section 3.2: "pose heatmap features").

Keypoints are the 133 COCO-WholeBody / DWPose points. The 21 heatmap channels group them as in
docs/design.md: the 17 body joints one channel each, then feet (6 points), face (68), left hand (21) and
right hand (21). A keypoint adds a Gaussian blob weighted by its confidence; a grouped channel sums its
points' blobs and is clipped to [0, 1]. Each blob is separable, exp(-dx^2) * exp(-dy^2), so a channel is one
(H, K) @ (K, W) matrix product per frame, never a (K, H, W) stack.

`mouth_mask` and `hand_mask` rasterise the mouth and hand landmarks onto the latent grid, per latent frame:
the regions that the flow loss can weight up (`flow.lip_weight`, `flow.hand_weight`), since a mouth or a
hand covers a few of a frame's latent positions.
`landmark_regions` does the same per video frame in pixels for the mouth and both hands: the region the
VAE's reconstruction loss can weight up (`launch.train_vae`'s `loss.region_l1`).
"""

from __future__ import annotations

import warnings

import numpy as np

from omnihuman_jax.models.conditions import VAE_TEMPORAL

NUM_KEYPOINTS = 133
NUM_CHANNELS = 21
# (start, stop) of each COCO-WholeBody group in the 133 points, after the 17 body joints.
GROUPS: tuple[tuple[str, int, int], ...] = (
    ("feet", 17, 23),
    ("face", 23, 91),
    ("left_hand", 91, 112),
    ("right_hand", 112, 133),
)
NUM_BODY = 17


def default_sigma(height: int, width: int) -> float:
    """Blob standard deviation in heatmap pixels: 1/64 of the short side, at least 1 pixel."""
    return max(1.0, min(height, width) / 64.0)


def _axis_gaussians(coord: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """(F, K, size) 1D Gaussians at normalised coordinates `coord` (F, K) over pixel centres."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size  # (size,)
    d = (centres[None, None, :] - coord[..., None]) * (size / sigma)  # (F, K, size), in sigmas
    return np.exp(-0.5 * d * d, dtype=np.float32)


def render_heatmaps(keypoints: np.ndarray, height: int, width: int, sigma: float | None = None) -> np.ndarray:
    """Render keypoints (F, 133, 3) with x, y in [0, 1] and a confidence to heatmaps (F, H, W, 21) float32.

    Non-finite keypoints and negative confidences count as absent (confidence 0).
    """
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must have shape (F, {NUM_KEYPOINTS}, 3), got {keypoints.shape}")
    if height <= 0 or width <= 0:
        raise ValueError(f"heatmap size must be positive, got {height}x{width}")
    sigma = default_sigma(height, width) if sigma is None else float(sigma)
    finite = np.all(np.isfinite(keypoints), axis=-1)  # (F, 133)
    kp = np.where(finite[..., None], keypoints, 0.0)
    conf = np.clip(kp[..., 2], 0.0, None) * finite  # (F, 133)
    gx = _axis_gaussians(kp[..., 0], width, sigma)  # (F, 133, W)
    gy = _axis_gaussians(kp[..., 1], height, sigma) * conf[..., None]  # (F, 133, H)

    num_frames = keypoints.shape[0]
    out = np.empty((num_frames, height, width, NUM_CHANNELS), np.float32)  # (F, H, W, 21)
    # Body joints: one keypoint per channel, an outer product each.
    body = gy[:, :NUM_BODY, :, None] * gx[:, :NUM_BODY, None, :]  # (F, 17, H, W)
    out[..., :NUM_BODY] = np.moveaxis(body, 1, -1)
    for c, (_, start, stop) in enumerate(GROUPS, start=NUM_BODY):
        # Sum of blobs = (H, K) @ (K, W) per frame.
        out[..., c] = np.matmul(np.swapaxes(gy[:, start:stop], 1, 2), gx[:, start:stop])  # (F, H, W)
    np.clip(out, 0.0, 1.0, out=out)
    return out


MOUTH = (71, 91)  # COCO-WholeBody mouth landmarks: face points 48-67 (outer and inner lips)


def latent_frame_max(x: np.ndarray) -> np.ndarray:
    """(F, ...) per video frame, F = 1 + 4k -> (1 + k, ...): frame 0 alone, then the max over each 4."""
    f = x.shape[0]
    if (f - 1) % VAE_TEMPORAL:
        raise ValueError(f"video frame count {f} is not 1 + 4k")
    rest = x[1:].reshape((f - 1) // VAE_TEMPORAL, VAE_TEMPORAL, *x.shape[1:]).max(axis=1)
    return np.concatenate([x[:1], rest], axis=0)


def mouth_mask(
    keypoints: np.ndarray, height: int, width: int, margin: float = 0.5, min_confidence: float = 0.3
) -> np.ndarray:
    """Keypoints (F, 133, 3), x and y in [0, 1] -> (T, height, width) float32 in {0, 1} on the latent grid.

    A cell is 1 when it meets the box around a frame's confident mouth landmarks, widened by `margin`
    cells on each side; a latent frame takes the union over its video frames. Frames with fewer than
    two confident mouth landmarks add nothing.
    """
    return latent_frame_max(landmark_union(keypoints, (MOUTH,), height, width, margin, min_confidence))


def hand_mask(
    keypoints: np.ndarray, height: int, width: int, margin: float = 0.5, min_confidence: float = 0.3
) -> np.ndarray:
    """Keypoints (F, 133, 3) -> (T, height, width) float32 in {0, 1} on the latent grid: `mouth_mask` for
    the two hands, one box per hand (their union, not one box spanning both)."""
    return latent_frame_max(landmark_union(keypoints, HANDS, height, width, margin, min_confidence))


HANDS = ((91, 112), (112, 133))  # COCO-WholeBody left and right hand landmarks
# Landmark masks by batch key: the flow loss's weighted regions (omnihuman_jax.batch.REGION_MASKS) and the
# region the audio update is confined to with model.audio_gate (omnihuman_jax.batch.AUDIO_REGION).
LATENT_REGIONS = {"lip_mask": mouth_mask, "hand_mask": hand_mask, "audio_region": mouth_mask}

# Landmark groups whose pixels a reconstruction loss can weight up: they are small and they carry the
# audio- and pose-driven motion (mouth: audio; hands: pose).
REGION_GROUPS: tuple[tuple[int, int], ...] = (MOUTH, *HANDS)


def landmark_regions(
    keypoints: np.ndarray, height: int, width: int, margin: float, min_confidence: float = 0.3
) -> np.ndarray:
    """Keypoints (F, 133, 3), x and y in [0, 1] -> (F, height, width) float32 in {0, 1} per video frame.

    The union of one box per `REGION_GROUPS` group (the mouth, each hand) around its confident landmarks,
    widened by `margin` pixels on each side; a group with fewer than two confident landmarks adds nothing.
    """
    return landmark_union(keypoints, REGION_GROUPS, height, width, margin, min_confidence)


def landmark_union(
    keypoints: np.ndarray,
    groups: tuple[tuple[int, int], ...],
    height: int,
    width: int,
    margin: float,
    min_confidence: float,
) -> np.ndarray:
    """Keypoints (F, 133, 3) -> (F, height, width) float32 in {0, 1}: the union of one `landmark_box` per
    (start, stop) group of the 133 landmarks."""
    kp = _check_keypoints(keypoints)
    boxes = [landmark_box(kp[:, a:b], height, width, margin, min_confidence) for a, b in groups]
    return np.logical_or.reduce(boxes).astype(np.float32)


def _check_keypoints(keypoints: np.ndarray) -> np.ndarray:
    kp = np.asarray(keypoints, np.float32)
    if kp.ndim != 3 or kp.shape[1:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must have shape (F, {NUM_KEYPOINTS}, 3), got {kp.shape}")
    return kp


def landmark_box(
    points: np.ndarray, height: int, width: int, margin: float, min_confidence: float
) -> np.ndarray:
    """(F, P, 3) landmarks, x and y in [0, 1] -> (F, height, width) bool: the cells meeting each frame's
    box around its confident landmarks, widened by `margin` cells; False where under two are confident."""
    ok = np.all(np.isfinite(points), axis=-1) & (np.nan_to_num(points[..., 2]) >= min_confidence)  # (F, P)
    x = np.where(ok, points[..., 0] * width, np.nan)  # (F, P) in cells
    y = np.where(ok, points[..., 1] * height, np.nan)
    seen = ok.sum(axis=1) >= 2  # (F,)
    with warnings.catch_warnings():  # all-NaN rows ("All-NaN slice") are the frames `seen` leaves out
        warnings.simplefilter("ignore", RuntimeWarning)
        x0, x1 = np.nanmin(x, axis=1) - margin, np.nanmax(x, axis=1) + margin  # (F,)
        y0, y1 = np.nanmin(y, axis=1) - margin, np.nanmax(y, axis=1) + margin
    cols, rows = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    in_x = (cols[None] + 1 > x0[:, None]) & (cols[None] < x1[:, None]) & seen[:, None]  # (F, W): [j, j+1)
    in_y = (rows[None] + 1 > y0[:, None]) & (rows[None] < y1[:, None])  # (F, H); NaN bounds compare False
    return in_y[:, :, None] & in_x[:, None, :]  # (F, H, W)
