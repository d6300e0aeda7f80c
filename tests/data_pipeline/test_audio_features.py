"""Tests for data_pipeline.audio_features: the log-mel frontend (against transformers' audio_utils)
and the wav2vec2 frontend (against the model's own hidden states), with a tiny random Wav2Vec2Model."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipeline.audio_features import (
    LogMelFrontend,
    Wav2Vec2Frontend,
    interpolate_frames,
    make_audio_frontend,
    mel_filterbank,
    window_average,
)


@pytest.fixture(scope="module")
def wav2vec2_dir(tmp_path_factory):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        vocab_size=4,
    )
    path = tmp_path_factory.mktemp("w2v")
    Wav2Vec2Model(config).save_pretrained(path)
    return path


def _noise(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))).astype(np.float32)


def test_mel_filterbank_vs_reference():
    from transformers.audio_utils import mel_filter_bank

    ours = mel_filterbank(400, 80, 16000, 0.0, 8000.0)
    ref = mel_filter_bank(201, 80, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    err = np.abs(ours - ref).max()
    assert err < 1e-9, f"mel filterbank differs from transformers.audio_utils by max {err}"


def test_log_mel_vs_reference():
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    x = _noise()
    filters = mel_filter_bank(201, 80, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    ref = spectrogram(
        x, window_function(400, "hann"), 400, 160, power=2.0, mel_filters=filters, log_mel="log10"
    ).T  # (frames, mels)
    ref = (np.maximum(ref, ref.max() - 8.0) + 4.0) / 4.0
    ours = LogMelFrontend().log_mel(x)
    err = np.abs(ours - ref).max()
    assert ours.shape == ref.shape and err < 1e-4, f"log-mel differs by max {err}"


@pytest.mark.parametrize("groups", [1, 2])
def test_log_mel_frontend_is_aligned_to_video_frames(groups):
    # Silence for frames 0..9 (0.4 s at 25 fps), a tone afterwards: energy rises exactly at frame 10.
    x = np.zeros(16000, np.float32)
    t = np.arange(16000 - 6400) / 16000
    x[6400:] = 0.5 * np.sin(2 * np.pi * 1000 * t)
    feats = LogMelFrontend(n_mels=40, groups=groups)(x, 25, 25.0)
    assert feats.shape == (25, groups, 40) and feats.dtype == np.float32
    energy = feats.max(axis=(1, 2))
    assert energy[:9].max() < energy[11:].min() - 1.0


def test_log_mel_frontend_pads_audio_shorter_than_the_video():
    feats = LogMelFrontend()(_noise(0.5), 25, 25.0)  # 1 s of video, 0.5 s of audio
    assert feats.shape == (25, 1, 80) and np.isfinite(feats).all()
    assert feats[-3:].mean() < feats[:10].mean()  # the padded tail reads as silence


def test_window_average_averages_inside_windows_and_fills_empty_ones():
    feats = np.arange(10, dtype=np.float32)[:, None]  # value k at time k
    out = window_average(feats, np.arange(10.0), np.array([0.0, 2.0, 4.2]), np.array([2.0, 4.0, 4.6]))
    np.testing.assert_allclose(out[:, 0], [0.5, 2.5, 4.0])


def test_interpolate_frames_is_linear_and_clamps_at_edges():
    feats = np.array([[0.0], [10.0]], np.float32)
    out = interpolate_frames(feats, np.array([1.0, 2.0]), np.array([0.0, 1.25, 3.0]))
    np.testing.assert_allclose(out[:, 0], [0.0, 2.5, 10.0])


def test_wav2vec2_frontend_keeps_configured_layers_interpolated_to_fps(wav2vec2_dir):
    import torch
    from transformers import Wav2Vec2Model

    frontend = Wav2Vec2Frontend(wav2vec2_dir, layers=(0, -1))
    x = _noise()
    feats = frontend(x, 25, 25.0)
    assert feats.shape == (25, 2, 16) and feats.dtype == np.float32
    # Reference: the model's own hidden states on the normalised waveform, interpolated per channel.
    model = Wav2Vec2Model.from_pretrained(wav2vec2_dir).eval()
    xn = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    with torch.no_grad():
        states = model(torch.from_numpy(xn)[None], output_hidden_states=True).hidden_states
    ref_layers = [states[0][0].numpy(), states[-1][0].numpy()]  # (N, D) each
    hop, rf = 20, 25  # from the conv strides (5, 4) and kernels (10, 4)
    times = (np.arange(ref_layers[0].shape[0]) * hop + rf / 2) / 16000
    centres = (np.arange(25) + 0.5) / 25
    for i, ref in enumerate(ref_layers):
        expected = np.stack([np.interp(centres, times, ref[:, d]) for d in range(16)], axis=1)
        err = np.abs(feats[:, i] - expected).max()
        assert err < 1e-4, f"wav2vec2 layer {i} differs from the model's hidden states by max {err}"


def test_wav2vec2_frontend_chunks_long_audio_with_increasing_times(wav2vec2_dir):
    frontend = Wav2Vec2Frontend(wav2vec2_dir, layers=None, chunk_seconds=0.3)
    assert frontend.num_layers == 4  # num_hidden_layers + 1
    states, times = frontend.hidden_states(_noise(1.0))
    assert states.shape[1:] == (4, 16) and states.shape[0] == times.shape[0]
    assert np.all(np.diff(times) > 0) and times[-1] < 1.0 and times[-1] > 0.95
    assert frontend(_noise(1.0), 25, 25.0).shape == (25, 4, 16)


def test_wav2vec2_frontend_rejects_out_of_range_layer(wav2vec2_dir):
    with pytest.raises(ValueError, match="layer 7"):
        Wav2Vec2Frontend(wav2vec2_dir, layers=(7,))


def test_make_audio_frontend_rejects_unknown_kind_and_missing_model_dir(tmp_path):
    with pytest.raises(ValueError, match="unknown audio frontend"):
        make_audio_frontend("mfcc")
    with pytest.raises(ValueError, match="audio_model_dir"):
        make_audio_frontend("wav2vec2")
    with pytest.raises(FileNotFoundError, match="config.json"):
        make_audio_frontend("wav2vec2", model_dir=tmp_path)
