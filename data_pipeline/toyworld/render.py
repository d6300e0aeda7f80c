"""Rendering toy-world clips to RGB frames, and writing/reading their mp4 and wav files.

The frames stand in for the paper's human videos (OmniHuman-1 section 3): a half-body person on a
patterned background. Shapes are rasterized with numpy at `SUPERSAMPLE` x the output size and box
filtered down, so sub-pixel positions (hand centres, the mouth opening) survive into the pixels.
Pixel (i, j) has its centre at (j + 0.5, i + 0.5), the keypoint convention of `motion.py`. The mouth
interior and the hands use the reserved colours of `measure.py`; nothing else does.

Files: mp4 is H.264 (libx264, yuv420p, one encoder thread, no macroblock tree, CRF `DEFAULT_CRF`) through
PyAV; wav is 16-bit PCM mono through soundfile.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile

from data_pipeline.toyworld import measure
from data_pipeline.toyworld.identity import EYE_COLOUR, LIP_COLOUR, Identity
from data_pipeline.toyworld.motion import ClipMotion

SUPERSAMPLE = 4
DEFAULT_CRF = 12
SLEEVE_SHADE = 0.8  # sleeves are the clothing colour times this


class _Canvas:
    """A supersampled RGB canvas in float32 with continuous pixel-centre coordinates."""

    def __init__(self, height: int, width: int, s: int = SUPERSAMPLE):
        self.h, self.w, self.s = height, width, s
        self.rgb = np.zeros((height * s, width * s, 3), np.float32)
        self.xs = (np.arange(width * s, dtype=np.float64) + 0.5) / s  # (W*s,) output-pixel units
        self.ys = (np.arange(height * s, dtype=np.float64) + 0.5) / s

    def _window(self, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice] | None:
        s = self.s
        j0, j1 = max(0, int(np.floor(x0 * s)) - 1), min(self.w * s, int(np.ceil(x1 * s)) + 1)
        i0, i1 = max(0, int(np.floor(y0 * s)) - 1), min(self.h * s, int(np.ceil(y1 * s)) + 1)
        return (slice(i0, i1), slice(j0, j1)) if (j1 > j0 and i1 > i0) else None

    def _paint(self, window, mask: np.ndarray, colour) -> None:
        region = self.rgb[window]
        region[mask] = np.asarray(colour, np.float32)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, colour, y_max: float = np.inf) -> None:
        win = self._window(cx - rx, cy - ry, cx + rx, cy + ry)
        if win is None:
            return
        x, y = self.xs[win[1]][None, :], self.ys[win[0]][:, None]
        mask = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
        self._paint(win, mask & (y < y_max), colour)

    def rect(self, x0: float, y0: float, x1: float, y1: float, colour) -> None:
        win = self._window(x0, y0, x1, y1)
        if win is None:
            return
        x, y = self.xs[win[1]][None, :], self.ys[win[0]][:, None]
        self._paint(win, (x >= x0) & (x < x1) & (y >= y0) & (y < y1), colour)

    def capsule(self, p: np.ndarray, q: np.ndarray, radius: float, colour) -> None:
        """A thick line segment with round ends."""
        win = self._window(
            min(p[0], q[0]) - radius,
            min(p[1], q[1]) - radius,
            max(p[0], q[0]) + radius,
            max(p[1], q[1]) + radius,
        )
        if win is None:
            return
        x, y = self.xs[win[1]][None, :], self.ys[win[0]][:, None]
        d = q - p
        t = np.clip(((x - p[0]) * d[0] + (y - p[1]) * d[1]) / max(float(d @ d), 1e-12), 0.0, 1.0)
        self._paint(win, (x - p[0] - t * d[0]) ** 2 + (y - p[1] - t * d[1]) ** 2 <= radius * radius, colour)

    def background(self, identity: Identity, offset: np.ndarray) -> None:
        """Fill with the identity's background pattern, in world coordinates moved by the camera."""
        self.rgb[:] = np.asarray(identity.background[1], np.float32)
        x = self.xs[None, :] - offset[0]
        y = self.ys[:, None] - offset[1]
        size = float(min(self.h, self.w))
        if identity.background_pattern == "stripes":
            mask = np.broadcast_to(np.mod(x / (0.25 * size), 1.0) < 0.3, self.rgb.shape[:2])
        elif identity.background_pattern == "checks":
            p = 0.2 * size
            mask = np.mod(np.floor(x / p) + np.floor(y / p), 2) == 1
        elif identity.background_pattern == "window":
            mask = (x >= 0.05 * self.w) & (x < 0.3 * self.w) & (y >= 0.08 * self.h) & (y < 0.42 * self.h)
        else:
            return
        self.rgb[mask] = np.asarray(identity.background_accent[1], np.float32)

    def downsample(self) -> np.ndarray:
        """Box filter to the output size. (H, W, 3) uint8."""
        s = self.s
        out = self.rgb.reshape(self.h, s, self.w, s, 3).mean(axis=(1, 3))
        return np.clip(np.round(out), 0, 255).astype(np.uint8)


def render_frame(identity: Identity, motion: ClipMotion, f: int, height: int, width: int) -> np.ndarray:
    """Frame f of a clip. (H, W, 3) uint8."""
    c = _Canvas(height, width)
    c.background(identity, motion.camera[f])
    size = float(min(height, width))
    (hx, hy), (rx, ry) = motion.head_centre[f], motion.head_radii
    skin, hair, cloth = identity.skin[1], identity.hair[1], identity.clothing[1]
    sleeve = tuple(int(SLEEVE_SHADE * v) for v in cloth)
    shoulders, elbows, hands = motion.shoulders[f], motion.elbows[f], motion.hands[f]
    if identity.hair_style == "long":  # long hair falls behind the shoulders
        c.rect(hx - 1.15 * rx, hy - 0.2 * ry, hx + 1.15 * rx, shoulders[0, 1] + 0.08 * size, hair)
    arm_r = 0.045 * size
    c.capsule(shoulders[0], shoulders[1], 0.09 * size, cloth)  # shoulder line
    top = float(shoulders[:, 1].mean())
    c.rect(float(shoulders[1, 0]), top, float(shoulders[0, 0]), height + 1.0, cloth)  # torso
    c.rect(hx - 0.08 * size, hy + 0.6 * ry, hx + 0.08 * size, top + 0.01 * size, skin)  # neck
    if identity.hair_style == "long":
        c.ellipse(hx, hy - 0.05 * ry, 1.15 * rx, 1.1 * ry, hair)
    elif identity.hair_style == "short":
        c.ellipse(hx, hy - 0.1 * ry, 1.1 * rx, 1.05 * ry, hair, y_max=hy - 0.2 * ry)
    c.ellipse(hx, hy, rx, ry, skin)
    if identity.hair_style != "bald":
        c.ellipse(hx, hy - 0.1 * ry, 1.08 * rx, 1.0 * ry, hair, y_max=hy - 0.45 * ry)  # fringe
    for side in (-1.0, 1.0):
        c.ellipse(hx + side * 0.4 * rx, hy - 0.15 * ry, 0.1 * rx + 0.5, 0.08 * ry + 0.5, EYE_COLOUR)
    (mx, my), half_w = motion.mouth_centre[f], 0.5 * motion.mouth_width
    c.rect(mx - half_w, my - 0.4, mx + half_w, my + 0.4, LIP_COLOUR)  # the closed lips' line
    opening = float(motion.mouth_opening[f])
    if opening > 0:
        c.rect(mx - half_w, my - 0.5 * opening, mx + half_w, my + 0.5 * opening, measure.MOUTH_COLOUR)
    for hand in range(2):
        c.capsule(shoulders[hand], elbows[hand], arm_r, sleeve)
        c.capsule(elbows[hand], hands[hand], arm_r, sleeve)
    r = motion.hand_radius
    if identity.held_object is not None:  # held in the person's right hand, on its outer side
        ox, oy = hands[1]
        c.rect(ox - 2.4 * r, oy - 1.2 * r, ox - 0.3 * r, oy + 0.8 * r, identity.held_object[1])
    for hand, colour in enumerate((measure.LEFT_HAND_COLOUR, measure.RIGHT_HAND_COLOUR)):
        c.ellipse(float(hands[hand, 0]), float(hands[hand, 1]), r, r, colour)
    return c.downsample()


def render_clip(identity: Identity, motion: ClipMotion, height: int, width: int) -> np.ndarray:
    """All frames of a clip. (F, H, W, 3) uint8."""
    return np.stack([render_frame(identity, motion, f, height, width) for f in range(motion.hands.shape[0])])


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, crf: int = DEFAULT_CRF) -> None:
    """Encode (F, H, W, 3) uint8 RGB frames as H.264 yuv420p. H and W must be even."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs an even frame size, got {h}x{w}; pick even --height/--width")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.thread_count = 1  # one thread: the same bytes every run
        # mbtree off: x264's macroblock-tree rate control gave different bytes for the same frames in about
        # half of the runs with PyAV 18.1 (session 10); without it 18 of 18 runs were identical.
        stream.options = {"crf": str(crf), "preset": "medium", "x264-params": "mbtree=0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_mp4(path: str | Path) -> np.ndarray:
    """Decode every frame of a video as RGB. (F, H, W, 3) uint8."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path}: no video frames decoded; is it a video file?")
    return np.stack(frames)


def write_wav(path: str | Path, pcm16: np.ndarray, sample_rate: int) -> None:
    """Write mono int16 samples (N,) as 16-bit PCM wav."""
    pcm16 = np.asarray(pcm16)
    if pcm16.ndim != 1 or pcm16.dtype != np.int16:
        raise ValueError(f"pcm16 must be (N,) int16 mono samples, got {pcm16.shape} {pcm16.dtype}")
    soundfile.write(str(path), pcm16, sample_rate, subtype="PCM_16")


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a wav as float32 (N,) mono (channels averaged) and its sample rate."""
    wav, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    return wav.mean(axis=1).astype(np.float32), int(sr)
