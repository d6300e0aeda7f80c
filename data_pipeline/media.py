"""Decoding raw media for featurization: video frames, audio waveforms and keypoint files.

OmniHuman-1 (section 3.1) trains on videos at 25 fps with their audio (wav2vec features) and
DWPose keypoints (section 3.1, "Driving Conditions"). This module turns a source clip into:
- RGB frames resampled to the target fps by nearest-timestamp selection and fitted (resize + centre
  crop) to an aspect-ratio bucket (`data_pipeline.buckets`), decoded with PyAV (mp4 / mov / webm);
- a mono 16 kHz float waveform (soundfile for wav / flac, PyAV for mp3 and audio tracks of videos),
  resampled with `scipy.signal.resample_poly`;
- COCO-WholeBody 133 keypoints from `.npy` or `.json`, mapped into the bucketed frame.
Every failure raises `MediaError`, which names the file and carries a short `reason` tag.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import scipy.signal
import soundfile

from data_pipeline.buckets import nearest_bucket

AUDIO_SAMPLE_RATE = 16000
NUM_KEYPOINTS = 133
SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


class MediaError(RuntimeError):
    """A media file that cannot be used. `reason` is a short stable tag for skip counting."""

    def __init__(self, path: str | Path, message: str, *, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{Path(path).name}: {message}")


@dataclasses.dataclass(frozen=True)
class CropTransform:
    """Source pixels -> bucketed frame: scale by (scale_y, scale_x), then crop at (offset_y, offset_x)."""

    scale_y: float
    scale_x: float
    offset_y: int
    offset_x: int
    height: int  # output (bucket) size
    width: int

    def normalize_keypoints(self, keypoints: np.ndarray) -> np.ndarray:
        """(..., K, 3) source-pixel (x, y, conf) -> x, y in [0, 1] of the bucketed frame.

        Points the crop cuts away are clipped to the border and get confidence 0.
        """
        out = np.array(keypoints, dtype=np.float32, copy=True)
        x = (out[..., 0] * self.scale_x - self.offset_x) / self.width
        y = (out[..., 1] * self.scale_y - self.offset_y) / self.height
        outside = (x < 0) | (x > 1) | (y < 0) | (y > 1)
        out[..., 0] = np.clip(x, 0.0, 1.0)
        out[..., 1] = np.clip(y, 0.0, 1.0)
        out[..., 2] = np.where(outside, 0.0, out[..., 2])
        return out


def crop_transform(src_h: int, src_w: int, dst_h: int, dst_w: int) -> CropTransform:
    """Resize so the frame covers `dst_h x dst_w` with its aspect ratio kept, then centre crop."""
    scale = max(dst_h / src_h, dst_w / src_w)
    rh, rw = max(dst_h, round(src_h * scale)), max(dst_w, round(src_w * scale))
    return CropTransform(rh / src_h, rw / src_w, (rh - dst_h) // 2, (rw - dst_w) // 2, dst_h, dst_w)


@dataclasses.dataclass
class Video:
    """A decoded clip at the target fps, fitted to its bucket."""

    frames: np.ndarray  # (N, H, W, 3) uint8
    source_index: np.ndarray  # (N,) int64: the source frame each output frame was taken from
    num_source_frames: int
    source_size: tuple[int, int]  # (height, width) of the source
    bucket: int
    crop: CropTransform
    fps: float


def _frame_rgb(frame: av.VideoFrame, crop: CropTransform) -> np.ndarray:
    rh, rw = round(frame.height * crop.scale_y), round(frame.width * crop.scale_x)
    rgb = frame.to_ndarray(width=rw, height=rh, format="rgb24", interpolation="AREA")  # (rh, rw, 3)
    y0, x0 = crop.offset_y, crop.offset_x
    return np.ascontiguousarray(rgb[y0 : y0 + crop.height, x0 : x0 + crop.width])


def _check_duration(path: Path, seconds: float | None, max_duration_s: float | None) -> None:
    if max_duration_s is not None and seconds is not None and seconds > max_duration_s:
        raise MediaError(
            path,
            f"lasts {seconds:.1f} s, over max_duration_s={max_duration_s}; split it or raise the limit",
            reason="too_long",
        )


def _check_deadline(path: Path, deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise MediaError(path, f"{what} decoding exceeded decode_timeout_s", reason="decode_timeout")


def decode_video(
    path: str | Path,
    *,
    fps: float,
    buckets: tuple[tuple[int, int], ...],
    max_source_frames: int | None = None,
    max_duration_s: float | None = None,
    decode_timeout_s: float | None = None,
) -> Video:
    """Decode `path`, resample to `fps` by nearest timestamp and fit it to its nearest bucket.

    Output frame j shows the source frame whose timestamp is nearest to `j / fps` (ties go to the
    earlier frame), for every j with `j / fps` before the end of the last source frame. Only the
    selected frames are converted to RGB. Raises MediaError on unreadable input, on a source longer
    than `max_duration_s` or `max_source_frames`, or when decoding takes over `decode_timeout_s`.
    """
    path = Path(path)
    deadline = time.monotonic() + decode_timeout_s if decode_timeout_s else None
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise MediaError(path, f"cannot open video ({e})", reason="video_decode_error") from e
    with container:
        if not container.streams.video:
            raise MediaError(path, "has no video stream", reason="video_decode_error")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # a codec FFmpeg does not know
            raise MediaError(path, "video stream has an unknown codec", reason="video_decode_error")
        stream.thread_type = "AUTO"
        src_h, src_w = stream.codec_context.height, stream.codec_context.width
        if not src_h or not src_w:
            raise MediaError(path, "video stream has no frame size", reason="video_decode_error")
        if container.duration is not None:
            _check_duration(path, container.duration / 1e6, max_duration_s)
        bucket = nearest_bucket(src_h, src_w, buckets)
        crop = crop_transform(src_h, src_w, *buckets[bucket])
        rate = stream.average_rate or stream.guessed_rate
        src_dt = float(1 / Fraction(rate)) if rate else 1.0 / fps

        frames: list[np.ndarray] = []
        source_index: list[int] = []
        cache: tuple[int, np.ndarray] | None = None
        prev: tuple[int, float, av.VideoFrame] | None = None
        t0: float | None = None
        step = 0  # next output frame j, at time j / fps

        def emit(index: int, frame: av.VideoFrame) -> None:
            nonlocal cache
            if cache is None or cache[0] != index:
                cache = (index, _frame_rgb(frame, crop))
            frames.append(cache[1])
            source_index.append(index)

        count = 0
        try:
            for count, frame in enumerate(container.decode(stream), start=1):
                i = count - 1
                t_abs = frame.time if frame.time is not None else i * src_dt
                t0 = t_abs if t0 is None else t0
                t = t_abs - t0 if prev is None else max(t_abs - t0, prev[1])
                if max_source_frames is not None and count > max_source_frames:
                    raise MediaError(
                        path, f"has over max_source_frames={max_source_frames} frames", reason="too_long"
                    )
                _check_duration(path, t, max_duration_s)
                _check_deadline(path, deadline, "video")
                while step / fps <= t + 1e-9:
                    target = step / fps
                    if prev is not None and target - prev[1] <= t - target:
                        emit(prev[0], prev[2])
                    else:
                        emit(i, frame)
                    step += 1
                prev = (i, t, frame)
        except av.error.FFmpegError as e:
            raise MediaError(
                path, f"decoding failed after {count} frames ({e})", reason="video_decode_error"
            ) from e
        if prev is None:
            raise MediaError(path, "decoded no frames (truncated or empty file)", reason="video_decode_error")
        while step / fps < prev[1] + src_dt - 1e-9:  # the last source frame covers [t, t + dt)
            emit(prev[0], prev[2])
            step += 1
    return Video(
        frames=np.stack(frames),
        source_index=np.asarray(source_index, dtype=np.int64),
        num_source_frames=prev[0] + 1,
        source_size=(src_h, src_w),
        bucket=bucket,
        crop=crop,
        fps=float(fps),
    )


def resample_audio(
    waveform: np.ndarray, source_rate: int, target_rate: int = AUDIO_SAMPLE_RATE
) -> np.ndarray:
    """(S,) at `source_rate` -> (S',) at `target_rate` by polyphase filtering (exact for 44.1/48 kHz)."""
    if source_rate == target_rate:
        return waveform.astype(np.float32, copy=False)
    g = math.gcd(int(source_rate), int(target_rate))
    out = scipy.signal.resample_poly(waveform.astype(np.float64), target_rate // g, int(source_rate) // g)
    return out.astype(np.float32)


def _decode_audio_soundfile(path: Path, max_duration_s: float | None) -> tuple[np.ndarray, int]:
    info = soundfile.info(str(path))
    _check_duration(path, info.duration, max_duration_s)
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    return data.mean(axis=1), int(rate)


def _decode_audio_pyav(
    path: Path, max_duration_s: float | None, deadline: float | None
) -> tuple[np.ndarray, int]:
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise MediaError(path, f"cannot open audio ({e})", reason="audio_decode_error") from e
    with container:
        if not container.streams.audio:
            raise MediaError(path, "has no audio track; give an 'audio' file", reason="missing_audio")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate if stream.codec_context is not None else 0
        if not rate or rate <= 0:
            raise MediaError(
                path, "audio track has an unknown codec or no sample rate", reason="audio_decode_error"
            )
        resampler = av.AudioResampler(format="fltp")  # planar float, same layout and rate
        chunks: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(stream):
                for planar in resampler.resample(frame):
                    chunk = planar.to_ndarray().mean(axis=0)  # (C, n) -> (n,)
                    chunks.append(chunk)
                    total += chunk.shape[0]
                _check_duration(path, total / rate, max_duration_s)
                _check_deadline(path, deadline, "audio")
        except av.error.FFmpegError as e:
            raise MediaError(path, f"audio decoding failed ({e})", reason="audio_decode_error") from e
    if not chunks:
        raise MediaError(path, "audio track decoded to no samples", reason="missing_audio")
    return np.concatenate(chunks).astype(np.float32), int(rate)


def decode_audio(
    path: str | Path,
    *,
    sample_rate: int = AUDIO_SAMPLE_RATE,
    max_duration_s: float | None = None,
    decode_timeout_s: float | None = None,
) -> np.ndarray:
    """Decode `path` to a mono float32 waveform (S,) at `sample_rate`, channels averaged.

    wav / flac / ogg go through soundfile; mp3 and the audio tracks of mp4 / mov / webm through PyAV.
    """
    path = Path(path)
    deadline = time.monotonic() + decode_timeout_s if decode_timeout_s else None
    waveform = None
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        try:
            waveform, rate = _decode_audio_soundfile(path, max_duration_s)
        except MediaError:
            raise
        except (RuntimeError, OSError):
            waveform = None  # a codec libsndfile cannot read: let FFmpeg try
    if waveform is None:
        waveform, rate = _decode_audio_pyav(path, max_duration_s, deadline)
    if waveform.size == 0:
        raise MediaError(path, "audio has no samples", reason="missing_audio")
    return resample_audio(waveform, rate, sample_rate)


def load_keypoints(path: str | Path) -> np.ndarray:
    """COCO-WholeBody keypoints (F_src, 133, 3) float32 (x, y in source pixels, confidence).

    `.npy`: the array itself. `.json`: `{"keypoints": [[[x, y, c] x 133] x F_src]}`.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            _check_npy_header(path)  # shape and dtype before any data is read
            array = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".json":
            with path.open("r", encoding="utf-8") as f:
                array = np.asarray(json.load(f)["keypoints"], dtype=np.float32)
        else:
            raise MediaError(path, "keypoints must be .npy or .json", reason="keypoints_error")
        _check_keypoint_shape(path, array.shape)
        return array.astype(np.float32)
    except MediaError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, OverflowError, RecursionError) as e:
        raise MediaError(
            path, f"cannot read keypoints ({type(e).__name__}: {e})", reason="keypoints_error"
        ) from e


def _check_keypoint_shape(path: Path, shape: tuple[int, ...]) -> None:
    if len(shape) != 3 or tuple(shape[1:]) != (NUM_KEYPOINTS, 3):
        raise MediaError(
            path,
            f"keypoints have shape {shape}, expected (frames, {NUM_KEYPOINTS}, 3)",
            reason="keypoints_error",
        )


def _check_npy_header(path: Path) -> None:
    """A .npy's header: a plain numeric dtype, shape (F, 133, 3), and a file long enough for its data."""
    with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise MediaError(
                path, f".npy format version {version} is not supported", reason="keypoints_error"
            )
        shape, _, dtype = readers[version](f)
        header_end = f.tell()
    if dtype.kind not in "fiu" or dtype.fields is not None or dtype.subdtype is not None:
        raise MediaError(
            path, f"keypoints have dtype {dtype}, expected float or int", reason="keypoints_error"
        )
    _check_keypoint_shape(path, shape)
    need = header_end + math.prod(shape) * dtype.itemsize
    if path.stat().st_size < need:
        raise MediaError(
            path,
            f"is truncated: {path.stat().st_size} bytes, the header needs {need}",
            reason="keypoints_error",
        )
