"""Speech-like audio for the toy world: syllables, a voiced harmonic source, formants and pauses.

The audio condition of OmniHuman-1 (section 3.1) is speech; the toy world needs audio whose energy
envelope has speech rhythm (syllables of 80-260 ms, short gaps, longer pauses) so that a lip-synced
mouth is learnable, and whose spectrum is speech-like (a glottal pulse train at the voice pitch,
shaped by three vowel formants) so audio features (wav2vec2, log-mel) see something realistic.
Deterministic for a given numpy Generator.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import signal

SAMPLE_RATE = 16000
# (F1, F2, F3) formant centres in Hz of a few vowels (Peterson & Barney averages, rounded).
VOWEL_FORMANTS = (
    (730.0, 1090.0, 2440.0),  # a
    (530.0, 1840.0, 2480.0),  # e
    (270.0, 2290.0, 3010.0),  # i
    (570.0, 840.0, 2410.0),  # o
    (300.0, 870.0, 2240.0),  # u
)
FORMANT_BANDWIDTHS_HZ = (90.0, 110.0, 170.0)
PEAK_LEVEL = 0.6  # peak amplitude of the written waveform
WAVETABLE_SIZE = 4096  # samples in one period of the voiced source's wavetable


@dataclasses.dataclass(frozen=True)
class Speech:
    """A synthesized utterance: waveform (N,) float32 in [-1, 1] and its syllables as sample ranges."""

    wav: np.ndarray
    sample_rate: int
    syllables: tuple[tuple[int, int], ...]  # (start, end) sample indices


def _syllable_plan(rng: np.random.Generator, num_samples: int, sr: int) -> list[tuple[int, int]]:
    """Syllable (start, end) sample ranges: syllables in phrases of 2-7, separated by pauses."""
    out: list[tuple[int, int]] = []
    t = int(rng.uniform(0.0, 0.25) * sr)
    while t < num_samples:
        for _ in range(int(rng.integers(2, 8))):
            length = int(rng.uniform(0.08, 0.26) * sr)
            out.append((t, min(t + length, num_samples)))
            t += length + int(rng.uniform(0.02, 0.07) * sr)
            if t >= num_samples:
                break
        t += int(rng.uniform(0.15, 0.5) * sr)  # a pause between phrases
    return out


def _glottal_source(rng: np.random.Generator, num_samples: int, sr: int, f0_hz: float) -> np.ndarray:
    """Voiced excitation: harmonics of a slowly wandering pitch, amplitude 1/k for harmonic k. (N,)."""
    t = np.arange(num_samples) / sr
    drift = 1.0 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(f0_hz * drift) / sr  # (N,)
    num_harmonics = int(min(30, (sr / 2 - 200) // (f0_hz * 1.1)))
    # One period of the band-limited waveform as a wavetable, read at the running phase.
    theta = np.linspace(0.0, 2 * np.pi, WAVETABLE_SIZE + 1)  # (T + 1,) closed period
    k = np.arange(1, num_harmonics + 1)[:, None]
    table = np.sum(np.sin(k * theta[None]) / k, axis=0)  # amplitude 1/k: a -6 dB/octave tilt
    source = np.interp(np.mod(phase, 2 * np.pi), theta, table)
    return source / num_harmonics


def _formant_filter(x: np.ndarray, sr: int, formants: tuple[float, float, float]) -> np.ndarray:
    """Cascade of two-pole resonators at the formant frequencies (a classic formant synthesizer)."""
    y = x
    for freq, bw in zip(formants, FORMANT_BANDWIDTHS_HZ, strict=True):
        r = np.exp(-np.pi * bw / sr)
        theta = 2 * np.pi * freq / sr
        a = [1.0, -2 * r * np.cos(theta), r * r]
        y = signal.lfilter([1.0 - r], a, y)
    return y


def synthesize_speech(
    rng: np.random.Generator, seconds: float, f0_hz: float, sr: int = SAMPLE_RATE
) -> Speech:
    """Speech-like audio of `seconds` at `sr` Hz with voice pitch `f0_hz`."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    n = int(round(seconds * sr))
    plan = _syllable_plan(rng, n, sr)
    source = _glottal_source(rng, n, sr, f0_hz)
    wav = np.zeros(n)
    for start, end in plan:
        length = end - start
        if length < 16:
            continue
        vowel = VOWEL_FORMANTS[int(rng.integers(len(VOWEL_FORMANTS)))]
        voiced = _formant_filter(source[start:end], sr, vowel)
        attack = max(1, int(length * rng.uniform(0.15, 0.35)))
        env = np.ones(length)
        env[:attack] = np.sin(0.5 * np.pi * np.arange(attack) / attack) ** 2
        env[attack:] = np.cos(0.5 * np.pi * np.arange(length - attack) / (length - attack)) ** 1.5
        stress = rng.uniform(0.45, 1.0)
        voiced = voiced / (np.max(np.abs(voiced)) + 1e-9)
        onset = int(min(length, 0.02 * sr))  # a short noisy consonant burst at the syllable onset
        burst = np.zeros(length)
        burst[:onset] = rng.standard_normal(onset) * 0.15 * np.hanning(onset)
        wav[start:end] += stress * (voiced * env + burst)
    wav += rng.standard_normal(n) * 1e-3  # room noise
    wav = PEAK_LEVEL * wav / (np.max(np.abs(wav)) + 1e-9)
    return Speech(wav=wav.astype(np.float32), sample_rate=sr, syllables=tuple(plan))


def to_pcm16(wav: np.ndarray) -> np.ndarray:
    """Float waveform in [-1, 1] -> int16 samples (the wav file's content). Read back as float, a
    sample is int16 / 32768 (soundfile's convention), so `pcm16_to_float(to_pcm16(x))` is exact."""
    return np.clip(np.round(np.asarray(wav, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def pcm16_to_float(pcm: np.ndarray) -> np.ndarray:
    """int16 samples -> float32 in [-1, 1), as `soundfile.read` returns them."""
    return (np.asarray(pcm, np.int16).astype(np.float32) / 32768.0).astype(np.float32)
