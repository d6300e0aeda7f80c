"""Toy-world motion: mouth, head, arms, hands and camera trajectories, and COCO-WholeBody keypoints.

The pose condition of OmniHuman-1 (section 3.1) is a keypoint sequence, and the audio condition drives
the lips and, loosely, gestures. Here the mouth opening follows the audio envelope, hands make smooth
beat gestures at syllable onsets (scaled by the identity's gesture energy), the head sways and nods
with speech energy, and an optional camera shake moves everything. The result is written as the
133 COCO-WholeBody keypoints (17 body, 6 feet, 68 face, 21 + 21 hands) in pixels of the video, pixel
centres at (j + 0.5, i + 0.5), with confidences. Each hand's 21 keypoints average exactly to the
centre of the hand disc that `render.py` draws, so hand positions are measurable from pixels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.ndimage import gaussian_filter1d

from data_pipeline.toyworld import measure
from data_pipeline.toyworld.identity import Identity

NUM_KEYPOINTS = 133
FACE = 23  # first face keypoint (68, iBUG order)
LEFT_HAND = 91  # first left-hand keypoint (21)
RIGHT_HAND = 112  # first right-hand keypoint (21)
BODY_VISIBILITY_JOINTS = tuple(range(11))  # nose, eyes, ears, shoulders, elbows, wrists
HEAD_CENTRE = (0.5, 0.3)  # (x of width, y of height)
SHOULDER_DX, SHOULDER_Y = 0.22, 0.56
HAND_REST_DX, HAND_REST_Y = 0.2, 0.82
HAND_RADIUS = 0.05  # of min(H, W)
HAND_TOP_Y = 0.55  # hands stay below this (under the chin, never over the mouth)
MIN_MOUTH_OPENING = 0.2  # of the head's y radius: the mouth interior never vanishes, so lossy chroma
MAX_MOUTH_OPENING = 0.6  # (4:2:0, 2x2 blocks) still shows it; the opening above this minimum is the signal
CAMERA_AMPLITUDE = 0.04  # of min(H, W)


@dataclasses.dataclass(frozen=True)
class ClipMotion:
    """Per-frame geometry of one clip, in pixels. Arrays are float64."""

    head_centre: np.ndarray  # (F, 2) x, y
    head_radii: tuple[float, float]  # (rx, ry)
    mouth_centre: np.ndarray  # (F, 2)
    mouth_opening: np.ndarray  # (F,) height of the open mouth
    mouth_width: float
    shoulders: np.ndarray  # (F, 2, 2) person's (left, right)
    elbows: np.ndarray  # (F, 2, 2)
    hands: np.ndarray  # (F, 2, 2) centres of the hand discs
    hand_radius: float
    camera: np.ndarray  # (F, 2) camera offset already added to every position above
    keypoints: np.ndarray  # (F, 133, 3) float32 x, y, confidence


def _smooth_noise(rng: np.random.Generator, n: int, sigma_frames: float, amplitude: float) -> np.ndarray:
    """A smooth random series (n,) with standard deviation about `amplitude`."""
    x = gaussian_filter1d(rng.standard_normal(n + 40), sigma_frames, mode="reflect")[20:-20]
    return amplitude * x / (np.std(x) + 1e-9)


def _soft_clip(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Smoothly squash x into (lo, hi); close to the identity in the middle of the range."""
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    return mid + half * np.tanh((x - mid) / half)


def mouth_from_envelope(
    envelope: np.ndarray, reference_level: float, min_opening: float, max_opening: float
) -> np.ndarray:
    """Mouth opening (F,) in pixels: linear in the envelope from `min_opening` (silence) up to
    `max_opening` (at `reference_level` and above)."""
    level = np.clip(np.asarray(envelope, np.float64) / max(reference_level, 1e-9), 0.0, 1.0)
    return min_opening + (max_opening - min_opening) * level


def _beats(rng: np.random.Generator, n: int, onsets: np.ndarray, energy: float) -> np.ndarray:
    """Beat-gesture drive (n,) in [0, ~1]: smooth bumps at a random subset of syllable onsets."""
    drive = np.zeros(n)
    for onset in onsets:
        if 0 <= onset < n and rng.random() < 0.5 * energy:
            drive[onset] += rng.uniform(0.5, 1.0)
    return np.clip(gaussian_filter1d(drive, 2.0) * 5.0, 0.0, 1.2)


def _hand_keypoints(centre: np.ndarray, elbow: np.ndarray, radius: float) -> np.ndarray:
    """21 hand keypoints (F, 21, 2): wrist then 5 fingers x 4 joints fanned away from the elbow.

    They are shifted so their mean is exactly `centre`.
    """
    direction = centre - elbow
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True) + 1e-9  # (F, 2)
    normal = np.stack([-direction[:, 1], direction[:, 0]], axis=-1)
    pts = [centre - 0.9 * radius * direction]
    for finger in range(5):
        spread = (finger - 2) * 0.35 * radius
        for joint in range(1, 5):
            along = (-0.3 + 0.35 * joint) * radius
            pts.append(centre + along * direction + spread * normal * (0.6 + 0.1 * joint))
    pts = np.stack(pts, axis=1)  # (F, 21, 2)
    return pts - (pts.mean(axis=1, keepdims=True) - centre[:, None])


def _face_keypoints(
    head: np.ndarray, rx: float, ry: float, mouth: np.ndarray, opening: np.ndarray, mouth_w: float
) -> np.ndarray:
    """68 iBUG face landmarks (F, 68, 2); index 0 is on the person's right (image left)."""
    f = head.shape[0]
    pts = np.zeros((f, 68, 2))
    jaw = np.linspace(0.95 * np.pi, 0.05 * np.pi, 17)
    pts[:, 0:17] = head[:, None] + np.stack([rx * np.cos(jaw), ry * np.sin(jaw)], -1)
    for start, side in ((17, -1), (22, 1)):  # eyebrows
        xs = side * (np.linspace(0.65, 0.15, 5) if side < 0 else np.linspace(0.15, 0.65, 5)) * rx
        pts[:, start : start + 5] = head[:, None] + np.stack([xs, np.full(5, -0.38 * ry)], -1)
    pts[:, 27:31] = head[:, None] + np.stack([np.zeros(4), np.linspace(-0.2, 0.1, 4) * ry], -1)
    pts[:, 31:36] = head[:, None] + np.stack([np.linspace(-0.15, 0.15, 5) * rx, np.full(5, 0.18 * ry)], -1)
    ang6 = np.linspace(np.pi, -np.pi, 6, endpoint=False)
    for start, side in ((36, -1), (42, 1)):  # eyes around their centres
        centre = head + np.array([side * 0.4 * rx, -0.15 * ry])
        pts[:, start : start + 6] = centre[:, None] + np.stack(
            [0.15 * rx * np.cos(ang6), 0.06 * ry * np.sin(ang6)], -1
        )
    ang12 = np.linspace(np.pi, -np.pi, 12, endpoint=False)
    ang8 = np.linspace(np.pi, -np.pi, 8, endpoint=False)
    half_w = 0.5 * mouth_w
    outer_h = 0.5 * opening[:, None] + 0.6  # (F, 1) lips around the opening
    outer_x = np.broadcast_to(half_w * np.cos(ang12), (f, 12))
    pts[:, 48:60] = mouth[:, None] + np.stack([outer_x, outer_h * np.sin(ang12)], -1)
    inner_x = np.broadcast_to(0.8 * half_w * np.cos(ang8), (f, 8))  # inner lips: height = the opening
    pts[:, 60:68] = mouth[:, None] + np.stack([inner_x, 0.5 * opening[:, None] * np.sin(ang8)], -1)
    return pts


def simulate_motion(
    rng: np.random.Generator,
    identity: Identity,
    height: int,
    width: int,
    mouth_envelope: np.ndarray,
    envelope_reference: float,
    syllable_onsets: np.ndarray,
    *,
    camera_motion: bool,
    hands_dropped_fraction: float,
) -> ClipMotion:
    """Trajectories for one clip of F = len(mouth_envelope) frames.

    mouth_envelope: (F,) the audio envelope the mouth follows at each frame (already lagged).
    syllable_onsets: video-frame indices of syllable onsets (beat gestures start there).
    hands_dropped_fraction: fraction of frames, in [0, 1), in which both hands drop below the frame
    (the pose-visibility knob).
    """
    if not 0.0 <= hands_dropped_fraction < 1.0:
        raise ValueError(f"hands_dropped_fraction must be in [0, 1), got {hands_dropped_fraction}")
    n = int(np.asarray(mouth_envelope).shape[0])
    s = float(min(height, width))
    rx, ry = identity.head_radii[0] * s, identity.head_radii[1] * s
    energy = identity.gesture_energy
    loud = gaussian_filter1d(np.asarray(mouth_envelope, np.float64) / max(envelope_reference, 1e-9), 1.5)

    camera = np.zeros((n, 2))
    if camera_motion:
        cam_amp = CAMERA_AMPLITUDE * s
        camera = np.stack(
            [_smooth_noise(rng, n, 6.0, 0.5 * cam_amp), _smooth_noise(rng, n, 6.0, 0.3 * cam_amp)], -1
        )
        camera = np.clip(
            camera + np.linspace(-0.5, 0.5, n)[:, None] * rng.uniform(-cam_amp, cam_amp, 2), -cam_amp, cam_amp
        )

    head = np.empty((n, 2))
    head[:, 0] = HEAD_CENTRE[0] * width + _smooth_noise(rng, n, 8.0, 0.012 * s)
    head[:, 1] = HEAD_CENTRE[1] * height + 0.015 * s * np.clip(loud, 0, 1.5)  # nod with loudness
    mouth = head + np.array([0.0, 0.45 * ry])
    mouth_w = measure.mouth_width_px(width)
    opening = mouth_from_envelope(
        mouth_envelope, envelope_reference, MIN_MOUTH_OPENING * ry, MAX_MOUTH_OPENING * ry
    )

    sway = 0.5 * (head[:, 0] - HEAD_CENTRE[0] * width)
    shoulders = np.empty((n, 2, 2))
    for hand, side in enumerate((1.0, -1.0)):  # person's left is the image's right
        shoulders[:, hand, 0] = width * (0.5 + side * SHOULDER_DX) + sway
        shoulders[:, hand, 1] = height * SHOULDER_Y

    r = HAND_RADIUS * s
    margin = r + 1.0 + CAMERA_AMPLITUDE * s
    onsets = np.asarray(syllable_onsets, np.int64)
    hands = np.empty((n, 2, 2))
    activity = 0.2 + 0.8 * np.clip(gaussian_filter1d(loud, 2.0), 0.0, 1.0)  # (F,) hands move more in speech
    for hand, side in enumerate((1.0, -1.0)):
        beat = _beats(rng, n, onsets, energy)
        x = width * (0.5 + side * HAND_REST_DX) + activity * _smooth_noise(rng, n, 7.0, 0.05 * s * energy)
        x += side * 0.06 * s * beat
        y = height * HAND_REST_Y + activity * _smooth_noise(rng, n, 7.0, 0.04 * s * energy) - 0.22 * s * beat
        inner, outer = 0.5 * width + side * (r + 2.0), width / 2 + side * (width / 2 - margin)
        hands[:, hand, 0] = _soft_clip(x, min(inner, outer), max(inner, outer))
        hands[:, hand, 1] = _soft_clip(y, HAND_TOP_Y * height, height - margin)
    if hands_dropped_fraction > 0:
        drop = np.zeros(n)
        count = int(round(hands_dropped_fraction * n))
        start = int(rng.integers(0, n - count + 1))
        drop[start : start + count] = 1.0
        drop = gaussian_filter1d(drop, 1.0, mode="nearest")  # a quick but smooth drop and return
        hands[:, :, 1] += (height + 4 * r - hands[:, :, 1]) * drop[:, None]
    outward = np.array([1.0, -1.0])[None, :, None] * np.array([0.08 * width, 0.0])
    elbows = 0.5 * (shoulders + hands) + outward + np.array([0.0, 0.06 * height])

    head, mouth, shoulders, elbows, hands = (
        head + camera,
        mouth + camera,
        shoulders + camera[:, None],
        elbows + camera[:, None],
        hands + camera[:, None],
    )
    geometry = ClipMotion(
        head_centre=head,
        head_radii=(rx, ry),
        mouth_centre=mouth,
        mouth_opening=opening,
        mouth_width=mouth_w,
        shoulders=shoulders,
        elbows=elbows,
        hands=hands,
        hand_radius=r,
        camera=camera,
        keypoints=np.zeros((n, NUM_KEYPOINTS, 3), np.float32),
    )
    return dataclasses.replace(geometry, keypoints=wholebody_keypoints(rng, geometry, height, width))


def wholebody_keypoints(rng: np.random.Generator, m: ClipMotion, height: int, width: int) -> np.ndarray:
    """The (F, 133, 3) float32 COCO-WholeBody keypoints (pixels, confidence) of a clip's geometry.

    Points outside the frame get confidence 0; a hand whose disc is not wholly inside the frame gets
    low confidence (0.02-0.2) on its 21 keypoints and wrist; everything else 0.85-0.99.
    """
    head, (rx, ry), hands, elbows, r = m.head_centre, m.head_radii, m.hands, m.elbows, m.hand_radius
    n = head.shape[0]
    kp = np.zeros((n, NUM_KEYPOINTS, 3))
    kp[:, 0, :2] = head + np.array([0.0, 0.15 * ry])  # nose
    kp[:, 1, :2] = head + np.array([0.4 * rx, -0.15 * ry])  # left eye (image right)
    kp[:, 2, :2] = head + np.array([-0.4 * rx, -0.15 * ry])
    kp[:, 3, :2] = head + np.array([rx, 0.0])  # left ear
    kp[:, 4, :2] = head + np.array([-rx, 0.0])
    kp[:, 5:7, :2] = m.shoulders
    kp[:, 7:9, :2] = elbows
    hand_pts = [_hand_keypoints(hands[:, h], elbows[:, h], r) for h in range(2)]  # 2 x (F, 21, 2)
    kp[:, 9, :2], kp[:, 10, :2] = hand_pts[0][:, 0], hand_pts[1][:, 0]  # wrists = hand roots
    for joint, dx, dy in (
        (11, 0.15, 1.15),
        (12, -0.15, 1.15),
        (13, 0.15, 1.6),
        (14, -0.15, 1.6),
        (15, 0.15, 2.0),
        (16, -0.15, 2.0),
    ):
        kp[:, joint, :2] = np.array([width * (0.5 + dx), height * dy])  # hips, knees, ankles: below the frame
    kp[:, 17:20, :2] = kp[:, 15:16, :2]
    kp[:, 20:23, :2] = kp[:, 16:17, :2]
    kp[:, FACE : FACE + 68, :2] = _face_keypoints(
        head, rx, ry, m.mouth_centre, m.mouth_opening, m.mouth_width
    )
    kp[:, LEFT_HAND : LEFT_HAND + 21, :2] = hand_pts[0]
    kp[:, RIGHT_HAND : RIGHT_HAND + 21, :2] = hand_pts[1]

    conf = rng.uniform(0.85, 0.99, size=(n, NUM_KEYPOINTS))
    x, y = kp[..., 0], kp[..., 1]
    conf = np.where((x >= 0) & (x <= width) & (y >= 0) & (y <= height), conf, 0.0)
    for h, start in enumerate((LEFT_HAND, RIGHT_HAND)):
        cx, cy = hands[:, h, 0], hands[:, h, 1]
        inside = (cx - r >= 0) & (cx + r <= width) & (cy - r >= 0) & (cy + r <= height)  # (F,)
        low = rng.uniform(0.02, 0.2, size=(n, 21))
        conf[:, start : start + 21] = np.where(inside[:, None], conf[:, start : start + 21], low)
        conf[:, 9 + h] = np.where(inside, conf[:, 9 + h], low[:, 0])
    kp[..., 2] = conf
    return kp.astype(np.float32)


def pose_visibility(keypoints: np.ndarray) -> float:
    """Fraction of upper-body joints (nose..wrists) and hand keypoints that are confidently seen.

    The visible threshold is `measure.KEYPOINT_CONFIDENCE_VISIBLE`. keypoints: (F, 133, 3).
    """
    keypoints = np.asarray(keypoints)
    tracked = list(BODY_VISIBILITY_JOINTS) + list(range(LEFT_HAND, LEFT_HAND + 42))
    return float(np.mean(keypoints[:, tracked, 2] >= measure.KEYPOINT_CONFIDENCE_VISIBLE))
