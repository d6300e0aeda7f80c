"""Tests for data_pipeline.media: video/audio decoding, fps resampling, bucketing, keypoint files.

All media is generated here with PyAV, soundfile and numpy. The helpers `write_mp4` / `write_wav`
are reused by test_featurize.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile

from data_pipeline.buckets import bucket_table
from data_pipeline.media import (
    MediaError,
    crop_transform,
    decode_audio,
    decode_video,
    load_keypoints,
    resample_audio,
)


def frame_value(i: int) -> int:
    """Grey level of source frame i, so a decoded frame tells which source frame it shows."""
    return 10 + 7 * (i % 34)


def write_mp4(
    path: Path,
    *,
    num_frames: int = 25,
    fps: int = 25,
    height: int = 48,
    width: int = 64,
    audio_rate: int | None = 48000,
    amplitude: float = 0.3,
    tone_hz: float = 440.0,
    grey: int | None = None,
) -> Path:
    """An H.264 mp4 whose frame i is uniformly `frame_value(i)`, with a mono AAC sine track."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = None
        if audio_rate:
            audio = container.add_stream("aac", rate=audio_rate)
            audio.layout = "mono"
        for i in range(num_frames):
            img = np.full((height, width, 3), frame_value(i) if grey is None else grey, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio is not None:
            t = np.arange(int(audio_rate * num_frames / fps)) / audio_rate
            samples = (amplitude * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = audio_rate, 0
            for packet in audio.encode(frame):
                container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return path


def write_wav(
    path: Path, *, seconds: float = 1.0, rate: int = 44100, amplitude: float = 0.3, tone_hz: float = 440.0
) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    soundfile.write(str(path), (amplitude * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32), rate)
    return path


def truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def decoded_indices(frames: np.ndarray) -> np.ndarray:
    return np.round((frames[:, 0, 0, 0].astype(np.float64) - 10) / 7).astype(int)


BUCKETS = bucket_table(64 * 64)


def test_decode_video_same_fps_keeps_every_frame_in_order(tmp_path):
    video = decode_video(write_mp4(tmp_path / "a.mp4", num_frames=20), fps=25, buckets=BUCKETS)
    assert video.frames.dtype == np.uint8 and video.frames.shape[0] == 20
    np.testing.assert_array_equal(video.source_index, np.arange(20))
    np.testing.assert_array_equal(decoded_indices(video.frames), np.arange(20))
    assert video.num_source_frames == 20


@pytest.mark.parametrize("src_fps", [30, 20])
def test_decode_video_resamples_to_25fps_by_nearest_timestamp(tmp_path, src_fps):
    video = decode_video(
        write_mp4(tmp_path / "a.mp4", num_frames=src_fps, fps=src_fps), fps=25, buckets=BUCKETS
    )
    # One second of source gives 25 output frames; frame j shows the source frame nearest j / 25
    # (ties to the earlier frame).
    expected = np.ceil(np.arange(25) * src_fps / 25 - 0.5 - 1e-9).astype(int).clip(0, src_fps - 1)
    np.testing.assert_array_equal(video.source_index, expected)
    np.testing.assert_array_equal(decoded_indices(video.frames), expected)


def test_decode_video_fits_nearest_bucket_by_resize_and_centre_crop(tmp_path):
    path = write_mp4(tmp_path / "tall.mp4", num_frames=3, height=96, width=48)
    video = decode_video(path, fps=25, buckets=BUCKETS)
    h, w = BUCKETS[video.bucket]
    assert h > w, f"a 1:2 portrait source went to bucket {(h, w)}"
    assert video.frames.shape[1:] == (h, w, 3) and h % 16 == 0 and w % 16 == 0
    # The resize covers the bucket and the crop is centred.
    crop = video.crop
    assert round(96 * crop.scale_y) >= h and round(48 * crop.scale_x) >= w
    assert crop.offset_y == (round(96 * crop.scale_y) - h) // 2


def test_truncated_mp4_raises_media_error_naming_file(tmp_path):
    good = write_mp4(tmp_path / "good.mp4")
    bad = truncate(good, tmp_path / "broken_clip.mp4")
    with pytest.raises(MediaError, match="broken_clip.mp4") as info:
        decode_video(bad, fps=25, buckets=BUCKETS)
    assert info.value.reason == "video_decode_error"


def test_decode_video_refuses_sources_over_duration_or_frame_limit(tmp_path):
    path = write_mp4(tmp_path / "long.mp4", num_frames=50)
    with pytest.raises(MediaError, match="max_duration_s") as info:
        decode_video(path, fps=25, buckets=BUCKETS, max_duration_s=1.0)
    assert info.value.reason == "too_long"
    with pytest.raises(MediaError, match="max_source_frames"):
        decode_video(path, fps=25, buckets=BUCKETS, max_source_frames=10)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("rate", [44100, 48000, 16000])
def test_decode_audio_wav_resamples_to_16k_keeping_pitch_and_length(tmp_path, rate):
    wav = decode_audio(write_wav(tmp_path / "a.wav", rate=rate, tone_hz=440.0))
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert wav.shape[0] == 16000
    assert abs(_peak_hz(wav, 16000) - 440.0) < 2.0
    assert abs(np.abs(wav[1000:-1000]).max() - 0.3) < 0.01


def test_decode_audio_reads_the_mp4_aac_track_as_mono_16k(tmp_path):
    wav = decode_audio(write_mp4(tmp_path / "a.mp4", num_frames=25, tone_hz=1000.0))
    assert wav.ndim == 1 and abs(wav.shape[0] - 16000) < 1200  # AAC adds up to ~1 frame of padding
    assert abs(_peak_hz(wav, 16000) - 1000.0) < 3.0


def test_decode_audio_mixes_stereo_to_mono(tmp_path):
    t = np.arange(16000) / 16000
    left = 0.4 * np.sin(2 * np.pi * 300 * t)
    soundfile.write(str(tmp_path / "s.flac"), np.stack([left, np.zeros_like(left)], 1), 16000)
    wav = decode_audio(tmp_path / "s.flac")
    np.testing.assert_allclose(wav, left / 2, atol=1e-3)


def test_decode_audio_of_video_without_track_raises_missing_audio(tmp_path):
    path = write_mp4(tmp_path / "mute.mp4", audio_rate=None)
    with pytest.raises(MediaError, match="mute.mp4") as info:
        decode_audio(path)
    assert info.value.reason == "missing_audio"


def test_resample_audio_44k1_to_16k_is_exact_length():
    x = np.zeros(44100 * 3, np.float32)
    assert resample_audio(x, 44100).shape == (48000,)


def test_keypoints_npy_and_json_load_identically(tmp_path):
    kp = np.random.default_rng(0).uniform(0, 50, (4, 133, 3)).astype(np.float32)
    np.save(tmp_path / "k.npy", kp)
    (tmp_path / "k.json").write_text(json.dumps({"keypoints": kp.tolist()}))
    np.testing.assert_allclose(load_keypoints(tmp_path / "k.npy"), kp)
    np.testing.assert_allclose(load_keypoints(tmp_path / "k.json"), kp, rtol=1e-6)


def test_keypoints_with_wrong_shape_raise_keypoints_error(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((4, 17, 3), np.float32))
    with pytest.raises(MediaError, match="bad.npy") as info:
        load_keypoints(tmp_path / "bad.npy")
    assert info.value.reason == "keypoints_error"


def test_crop_transform_maps_keypoints_into_unit_square_and_drops_cropped_ones():
    crop = crop_transform(48, 64, 48, 48)  # 4:3 landscape into a square: 8 px cut each side
    kp = np.array([[[32.0, 24.0, 0.9], [0.0, 0.0, 0.8], [56.0, 48.0, 0.7], [3.0, 10.0, 0.6]]], np.float32)
    out = crop.normalize_keypoints(kp)
    np.testing.assert_allclose(out[0, 0], [0.5, 0.5, 0.9], atol=1e-6)
    np.testing.assert_allclose(out[0, 2], [1.0, 1.0, 0.7], atol=1e-6)
    assert out[0, 1, 2] == 0.0 and out[0, 1, 0] == 0.0  # x = -8 px: cropped away
    assert out[0, 3, 2] == 0.0
