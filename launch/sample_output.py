"""Writers of the sampler's outputs: an mp4 with the input audio muxed in (PyAV), and a PNG contact sheet.

Both write to a temporary file renamed into place, so an interrupted run never leaves a half-written output.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def contact_sheet_path(out: Path) -> Path:
    return out.with_name(out.stem + "_contact.png")


class VideoWriter:
    """mp4 (H.264, yuv420p) with the input audio as AAC, written segment by segment to a temporary file.

    Audio goes in alongside each segment's frames (its time span), so memory holds one segment. The audio
    stream keeps the input's layout (mono stays mono). `close()` renames the file into place.
    """

    def __init__(self, path: Path, fps: float, size: tuple[int, int], audio: tuple[np.ndarray, int]):

        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp{os.getpid()}.mp4")
        self.fps, (self.samples, self.rate) = fps, audio
        self.container = av.open(str(self.tmp), "w", format="mp4")
        self.video = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(10000))
        self.video.height, self.video.width = size
        self.video.pix_fmt = "yuv420p"
        self.video.options = {"crf": "18", "preset": "veryfast"}
        self.layout = "mono" if self.samples.shape[0] == 1 else "stereo"
        self.audio = self.container.add_stream("aac", rate=self.rate, layout=self.layout)
        self.frames_written, self.audio_written = 0, 0

    def write(self, frames: np.ndarray, last: bool) -> None:
        """frames (n, H, W, 3) uint8; then the audio up to the end of these frames (or all of it if last)."""

        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            self.container.mux(self.video.encode(frame))
        self.frames_written += frames.shape[0]
        end = self.samples.shape[1] if last else round(self.frames_written / self.fps * self.rate)
        chunk = self.samples[:, self.audio_written : end]
        if chunk.shape[1]:
            audio = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=self.layout)
            audio.sample_rate, audio.pts = self.rate, self.audio_written
            self.container.mux(self.audio.encode(audio))
            self.audio_written = end

    def close(self) -> None:
        self.container.mux(self.video.encode(None))
        self.container.mux(self.audio.encode(None))
        self.container.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.container.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class ContactSheet:
    """Keeps `count` evenly spaced frames (thumbnails) and saves them as one PNG grid."""

    def __init__(self, total: int, count: int, width: int = 256):
        self.wanted = set(np.linspace(0, total - 1, max(1, min(count, total))).round().astype(int).tolist())
        self.width, self.thumbs = width, []

    def add(self, first_index: int, frames: np.ndarray) -> None:
        from PIL import Image

        for k, rgb in enumerate(frames):
            if first_index + k in self.wanted:
                im = Image.fromarray(rgb)
                if im.width > self.width:
                    im = im.resize((self.width, round(im.height * self.width / im.width)))
                self.thumbs.append(im)

    def save(self, path: Path) -> None:
        from PIL import Image

        cols = min(4, len(self.thumbs))
        rows = math.ceil(len(self.thumbs) / cols)
        w, h = self.thumbs[0].size
        sheet = Image.new("RGB", (cols * w, rows * h))
        for i, im in enumerate(self.thumbs):
            sheet.paste(im, ((i % cols) * w, (i // cols) * h))
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
        sheet.save(tmp, format="PNG")
        os.replace(tmp, path)
