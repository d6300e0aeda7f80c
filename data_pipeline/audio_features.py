"""Per-video-frame audio features: a wav2vec2 frontend and a weight-free log-mel frontend.

OmniHuman-1 (section 3.1, "Driving Conditions") extracts wav2vec features and gives each video frame
its own audio tokens. As in MultiTalk / Hallo3 (see /work/shared/notes/peers.md), the wav2vec2
hidden states (about 50 Hz) are linearly interpolated to the video frame rate and a configured set
of hidden layers is kept, giving (F, L_layers, D). The log-mel frontend (Whisper's STFT settings:
25 ms Hann window, 10 ms hop, Slaney mel filters, log10 with an 8-decade floor) needs no learned
weights; it box-averages the 100 Hz mel frames over each video frame (or over L equal sub-windows
of it), giving (F, L, n_mels). Both take a mono 16 kHz waveform whose sample 0 is video time 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Protocol

import numpy as np

SAMPLE_RATE = 16000


class AudioFrontend(Protocol):
    """Waveform (S,) at 16 kHz -> features (num_frames, num_layers, dim) float32 at `fps`."""

    num_layers: int
    dim: int

    def __call__(self, waveform: np.ndarray, num_frames: int, fps: float) -> np.ndarray: ...


def _pad_to(waveform: np.ndarray, num_samples: int) -> np.ndarray:
    """Zero-pad (S,) at the end to at least `num_samples` so features cover every video frame."""
    if waveform.shape[0] >= num_samples:
        return waveform
    return np.pad(waveform, (0, num_samples - waveform.shape[0]))


def interpolate_frames(features: np.ndarray, times: np.ndarray, target_times: np.ndarray) -> np.ndarray:
    """Linear interpolation along axis 0: features (N, ...) sampled at `times` -> (M, ...) at `target_times`.

    Targets outside [times[0], times[-1]] take the edge value.
    """
    pos = np.interp(target_times, times, np.arange(len(times), dtype=np.float64))
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(times) - 1)
    w = (pos - lo).reshape((-1,) + (1,) * (features.ndim - 1))
    return ((1.0 - w) * features[lo] + w * features[hi]).astype(np.float32)


def window_average(
    features: np.ndarray, times: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """Mean of features (N, D) whose `times` lie in [start, end) per window -> (M, D).

    A window holding no feature frame takes the frame nearest its centre.
    """
    csum = np.concatenate(
        [np.zeros((1,) + features.shape[1:]), np.cumsum(features, axis=0, dtype=np.float64)]
    )
    lo = np.searchsorted(times, starts, side="left")
    hi = np.searchsorted(times, ends, side="left")
    count = (hi - lo).reshape(-1, 1)
    mean = (csum[hi] - csum[lo]) / np.maximum(count, 1)
    centres = (starts + ends) / 2
    right = np.clip(np.searchsorted(times, centres), 0, len(times) - 1)
    left = np.maximum(right - 1, 0)
    nearest = np.where(np.abs(times[left] - centres) <= np.abs(times[right] - centres), left, right)
    return np.where(count > 0, mean, features[nearest]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Log-mel frontend
# ---------------------------------------------------------------------------------------------


def hz_to_mel_slaney(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) * 27.0 / np.log(6.4), mels)


def mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    freq = 200.0 * mels / 3.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(np.log(6.4) * (mels - 15.0) / 27.0), freq)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> np.ndarray:
    """Triangular Slaney mel filters with area normalisation, (n_fft // 2 + 1, n_mels)."""
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(hz_to_mel_slaney(f_min), hz_to_mel_slaney(f_max), n_mels + 2)
    edges = mel_to_hz_slaney(mel_points)  # (n_mels + 2,)
    diffs = np.diff(edges)
    slopes = edges[None, :] - fft_freqs[:, None]  # (bins, n_mels + 2)
    down = -slopes[:, :-2] / diffs[:-1]
    up = slopes[:, 2:] / diffs[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]


def power_spectrogram(waveform: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """|STFT|^2 with a periodic Hann window, centred frames (reflect padding): (frames, n_fft // 2 + 1)."""
    padded = np.pad(waveform.astype(np.float64), n_fft // 2, mode="reflect")
    num = 1 + (padded.shape[0] - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(num)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    return np.abs(np.fft.rfft(padded[idx] * window, axis=1)) ** 2


class LogMelFrontend:
    """Weight-free log-mel features per video frame, (F, groups, n_mels).

    Each video frame's span [j / fps, (j + 1) / fps) is split into `groups` equal sub-windows, and
    the mel frames whose centres fall into a sub-window are averaged.
    """

    def __init__(
        self,
        n_mels: int = 80,
        groups: int = 1,
        n_fft: int = 400,
        hop: int = 160,
        f_min: float = 0.0,
        f_max: float = 8000.0,
    ):
        if groups < 1:
            raise ValueError(f"log-mel groups must be >= 1, got {groups}")
        self.n_mels, self.groups, self.n_fft, self.hop = n_mels, groups, n_fft, hop
        self.filters = mel_filterbank(n_fft, n_mels, SAMPLE_RATE, f_min, f_max)  # (bins, n_mels)
        self.num_layers, self.dim = groups, n_mels

    def log_mel(self, waveform: np.ndarray) -> np.ndarray:
        """(S,) -> (frames, n_mels): log10 mel power, floored 8 decades below its max, scaled as Whisper."""
        if waveform.shape[0] <= self.n_fft // 2:
            waveform = _pad_to(waveform, self.n_fft // 2 + 1)
        mel = power_spectrogram(waveform, self.n_fft, self.hop) @ self.filters
        log_spec = np.log10(np.maximum(mel, 1e-10))
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
        return ((log_spec + 4.0) / 4.0).astype(np.float32)

    def __call__(self, waveform: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
        waveform = _pad_to(waveform, math.ceil(num_frames / fps * SAMPLE_RATE))
        mel = self.log_mel(waveform)  # (N, n_mels), frame k centred at k * hop / sr
        times = np.arange(mel.shape[0]) * self.hop / SAMPLE_RATE
        edges = np.arange(num_frames * self.groups + 1) / (fps * self.groups)
        feats = window_average(mel, times, edges[:-1], edges[1:])  # (F * groups, n_mels)
        return feats.reshape(num_frames, self.groups, self.n_mels)


# ---------------------------------------------------------------------------------------------
# wav2vec2 frontend
# ---------------------------------------------------------------------------------------------


class Wav2Vec2Frontend:
    """wav2vec2 hidden states from a local `Wav2Vec2Model` folder, per video frame: (F, L, D).

    `layers` index `hidden_states` (0 is the feature projection output, i is transformer layer i;
    negative indices count from the end); None keeps all `num_hidden_layers + 1`. The waveform is
    normalised to zero mean and unit variance when the folder's preprocessor config asks for it (the
    default, as for wav2vec2-base), and run in chunks of `chunk_seconds` to bound memory.
    """

    def __init__(
        self,
        model_dir: str | Path,
        layers: tuple[int, ...] | None = None,
        *,
        chunk_seconds: float = 30.0,
        device: str = "cpu",
    ):
        import torch
        from transformers import Wav2Vec2Model

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"wav2vec2 folder {model_dir} has no config.json; save a Wav2Vec2Model there with "
                "save_pretrained (models are never downloaded here)"
            )
        self.torch = torch
        self.model = Wav2Vec2Model.from_pretrained(
            str(model_dir), local_files_only=True, trust_remote_code=False
        ).to(device)
        self.model.eval()
        self.device = device
        config = self.model.config
        num_states = config.num_hidden_layers + 1
        self.layers = tuple(range(num_states)) if layers is None else tuple(layers)
        for layer in self.layers:
            if not -num_states <= layer < num_states:
                raise ValueError(f"wav2vec2 layer {layer} out of range; the model has {num_states} states")
        self.num_layers, self.dim = len(self.layers), config.hidden_size
        self.hop = int(np.prod(config.conv_stride))
        strides = np.cumprod((1,) + tuple(config.conv_stride[:-1]))
        self.receptive_field = 1 + int(
            sum((k - 1) * s for k, s in zip(config.conv_kernel, strides, strict=True))
        )
        self.normalize = True
        preproc = model_dir / "preprocessor_config.json"
        if preproc.is_file():
            self.normalize = bool(json.loads(preproc.read_text()).get("do_normalize", True))
        self.chunk_samples = max(
            self.receptive_field, int(chunk_seconds * SAMPLE_RATE) // self.hop * self.hop
        )

    def hidden_states(self, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(S,) -> states (N, L, D) float32 at the wav2vec2 frame rate (hop 320 samples for base
        models) and the centre time in seconds of each state, (N,)."""
        x = waveform.astype(np.float32)
        if self.normalize:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        outputs, times = [], []
        for start in range(0, x.shape[0], self.chunk_samples):
            chunk = _pad_to(x[start : start + self.chunk_samples], self.receptive_field)
            with self.torch.inference_mode():
                out = self.model(
                    self.torch.from_numpy(chunk)[None].to(self.device), output_hidden_states=True
                )
            states = self.torch.stack([out.hidden_states[i][0] for i in self.layers], dim=1)  # (n, L, D)
            outputs.append(states.float().cpu().numpy())
            n = states.shape[0]
            times.append((start + np.arange(n) * self.hop + self.receptive_field / 2) / SAMPLE_RATE)
        return np.concatenate(outputs, axis=0), np.concatenate(times)

    def __call__(self, waveform: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
        waveform = _pad_to(waveform, math.ceil(num_frames / fps * SAMPLE_RATE))
        states, times = self.hidden_states(waveform)  # (N, L, D), (N,)
        frame_centres = (np.arange(num_frames) + 0.5) / fps
        return interpolate_frames(states, times, frame_centres)  # (F, L, D)


def make_audio_frontend(
    kind: str,
    *,
    model_dir: str | Path | None = None,
    layers: tuple[int, ...] | None = None,
    n_mels: int = 80,
    groups: int = 1,
) -> AudioFrontend:
    """`kind` is "wav2vec2" (needs `model_dir`) or "logmel"."""
    if kind == "wav2vec2":
        if not model_dir:
            raise ValueError(
                "the wav2vec2 audio frontend needs audio_model_dir (a local Wav2Vec2Model folder)"
            )
        return Wav2Vec2Frontend(model_dir, layers)
    if kind == "logmel":
        return LogMelFrontend(n_mels=n_mels, groups=groups)
    raise ValueError(f"unknown audio frontend {kind!r}; choose 'wav2vec2' or 'logmel'")
