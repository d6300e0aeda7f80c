"""Pose heatmaps for the pose condition (OmniHuman-1, section 3.2: "pose heatmap features").

Keypoints are the 133 COCO-WholeBody / DWPose points. The 21 heatmap channels group them as in
docs/design.md: the 17 body joints one channel each, then feet (6 points), face (68), left hand (21) and
right hand (21). A keypoint adds a Gaussian blob weighted by its confidence; a grouped channel sums its
points' blobs and is clipped to [0, 1]. Each blob is separable, exp(-dx^2) * exp(-dy^2), so a channel is one
(H, K) @ (K, W) matrix product per frame, never a (K, H, W) stack.
"""

from __future__ import annotations

import numpy as np

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
