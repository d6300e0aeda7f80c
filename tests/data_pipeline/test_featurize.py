"""Tests for featurization: manifest parsing, buckets, text features and featurize_manifest end to end.

Media (mp4 with AAC, 44.1 kHz wav, truncated mp4, silent wav, mismatched keypoints) is generated in
the tests; models are tiny random ones saved to tmp_path.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile

from data_pipeline import records as record_spec
from data_pipeline.buckets import bucket_table, nearest_bucket
from data_pipeline.featurize import FeaturizeOptions, FeaturizeReport, featurize_manifest, reference_indices
from data_pipeline.manifest import ManifestError, iter_manifest, read_manifest
from tests.data_pipeline.test_media import truncate, write_mp4, write_wav

CLIP = 9  # 1 + 4 * 2 frames
OPTIONS = FeaturizeOptions(pixel_budget=64 * 64, clip_frames=CLIP, mel_bins=16, num_ref_candidates=2)


def toy_encode(frames: np.ndarray) -> np.ndarray:
    """A deterministic stand-in VAE: (B, F, H, W, 3) -> (B, 1 + (F - 1) // 4, H / 8, W / 8, 4)."""
    b, f, h, w, _ = frames.shape
    groups = [frames[:, :1]] + [frames[:, 1 + 4 * i : 5 + 4 * i] for i in range((f - 1) // 4)]
    x = np.stack([g.mean(axis=1) for g in groups], axis=1)  # (B, T, H, W, 3)
    x = x.reshape(b, x.shape[1], h // 8, 8, w // 8, 8, 3).mean(axis=(3, 5))
    return np.concatenate([x, x.mean(axis=-1, keepdims=True)], axis=-1).astype(np.float32)


def crashing_encode(frames: np.ndarray) -> np.ndarray:
    """Kills its worker process on an all-white clip (a stand-in for a decoder segfault)."""
    if frames.min() > 0.9:
        os._exit(3)
    return toy_encode(frames)


def _write_manifest(root: Path, lines: list) -> Path:
    path = root / "manifest.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """good (2 clips, keypoints), sep (30 fps video + 44.1 kHz wav, 2 clips), broken, silent, kpbad,
    an invalid JSON line, a line without a video, and a path leaving the root."""
    root = tmp_path_factory.mktemp("raw") / "data"
    (root / "clips").mkdir(parents=True)
    c = root / "clips"
    write_mp4(c / "good.mp4", num_frames=25)
    kp = np.zeros((25, 133, 3), np.float32)
    kp[..., 0], kp[..., 1], kp[..., 2] = 32.0, 24.0, 0.9
    np.save(c / "good.kp.npy", kp)
    write_mp4(c / "sep.mp4", num_frames=30, fps=30, audio_rate=None)
    write_wav(c / "sep.wav", seconds=1.0, rate=44100)
    sep_kp = np.zeros((30, 133, 3), np.float32)
    sep_kp[..., 0] = np.arange(30)[:, None]  # x encodes the source frame index
    sep_kp[..., 1], sep_kp[..., 2] = 24.0, 1.0
    (c / "sep.kp.json").write_text(json.dumps({"keypoints": sep_kp.tolist()}))
    truncate(write_mp4(c / "whole.mp4"), c / "broken.mp4")
    write_mp4(c / "silent.mp4", num_frames=25, audio_rate=None)
    soundfile.write(str(c / "silent.wav"), np.zeros(16000, np.float32), 16000)
    write_mp4(c / "kpbad.mp4", num_frames=25)
    np.save(c / "kpbad.npy", np.zeros((20, 133, 3), np.float32))
    write_mp4(root.parent / "outside.mp4", num_frames=10)
    scores = {"lipsync": 7.1, "pose_visibility": 0.93, "aesthetics": 5.2, "motion_amplitude": 0.4}
    _write_manifest(
        root,
        [
            dict(clip_id="good", video="clips/good.mp4", keypoints="clips/good.kp.npy", caption="a man talks",
                 scores=scores),
            dict(clip_id="sep", video="clips/sep.mp4", audio="clips/sep.wav", keypoints="clips/sep.kp.json",
                 scores={"lipsync": 2.0, "pose_visibility": 0.5}, split="test"),
            dict(clip_id="broken", video="clips/broken.mp4"),
            dict(clip_id="silent", video="clips/silent.mp4", audio="clips/silent.wav"),
            dict(clip_id="kpbad", video="clips/kpbad.mp4", keypoints="clips/kpbad.npy"),
            '{"clip_id": "x", "video": ',
            dict(clip_id="novideo", caption="no video here"),
            dict(clip_id="outside", video="../outside.mp4"),
        ],
    )  # fmt: skip
    return root


def _run(dataset: Path, options: FeaturizeOptions = OPTIONS, **kwargs):
    run = featurize_manifest(dataset / "manifest.jsonl", options, progress=False, **kwargs)
    return list(run), run.report


# ---------------------------------------------------------------------------------------------
# Buckets and manifest
# ---------------------------------------------------------------------------------------------


def test_bucket_table_has_16_multiple_sides_from_9x16_to_16x9_near_budget():
    table = bucket_table(512 * 512)
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in table)
    ratios = [w / h for h, w in table]
    assert ratios == sorted(ratios) and (512, 512) in table
    assert abs(ratios[0] - 9 / 16) < 0.02 and abs(ratios[-1] - 16 / 9) < 0.02
    assert all(abs(h * w / 512**2 - 1) < 0.06 for h, w in table)


def test_nearest_bucket_picks_portrait_square_and_landscape():
    table = bucket_table(512 * 512)
    assert table[nearest_bucket(1920, 1080, table)] == (688, 384)
    assert table[nearest_bucket(720, 720, table)] == (512, 512)
    assert table[nearest_bucket(1080, 1920, table)] == (384, 688)
    with pytest.raises(ValueError, match="pixel_budget"):
        bucket_table(100)


def test_read_manifest_error_names_the_line_number(dataset):
    with pytest.raises(ManifestError, match="manifest line 6: invalid JSON"):
        read_manifest(dataset / "manifest.jsonl")


def test_iter_manifest_refuses_paths_leaving_root_unless_allowed(dataset):
    items = list(iter_manifest(dataset / "manifest.jsonl"))
    errors = {e.line: e for e in items if isinstance(e, ManifestError)}
    assert errors[8].reason == "path_outside_root" and "allow_outside_root" in str(errors[8])
    assert errors[7].reason == "bad_manifest_line" and "'video'" in str(errors[7])
    allowed = list(iter_manifest(dataset / "manifest.jsonl", allow_outside_root=True))
    assert any(getattr(e, "clip_id", "") == "outside" for e in allowed)


def test_manifest_checks_file_size_and_score_types_before_decoding(tmp_path):
    write_mp4(tmp_path / "v.mp4", num_frames=3)
    lines = [
        dict(clip_id="a", video="v.mp4"),
        dict(clip_id="b", video="v.mp4", scores={"lipsync": "high"}),
        dict(clip_id="a", video="v.mp4"),
        dict(clip_id="c", video="missing.mp4"),
    ]
    items = list(iter_manifest(_write_manifest(tmp_path, lines), max_file_bytes=100))
    assert [getattr(e, "reason", None) for e in items] == [
        "file_too_large",
        "bad_manifest_line",
        "file_too_large",
        "missing_file",
    ]
    items = list(iter_manifest(tmp_path / "manifest.jsonl"))
    assert items[0].video == (tmp_path / "v.mp4").resolve() and math.isnan(items[0].score("lipsync"))
    assert items[2].reason == "duplicate_clip_id"


def test_options_validate_rejects_clip_frames_not_1_plus_4k_and_missing_model_dirs(tmp_path):
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        FeaturizeOptions(clip_frames=8).validate()
    with pytest.raises(FileNotFoundError, match="text_encoder_dir"):
        FeaturizeOptions(text_encoder_dir=str(tmp_path)).validate()
    with pytest.raises(ValueError, match="audio_model_dir"):
        FeaturizeOptions(audio_frontend="wav2vec2").validate()


# ---------------------------------------------------------------------------------------------
# featurize_manifest
# ---------------------------------------------------------------------------------------------


def test_featurize_yields_valid_frame_records_and_counts_every_skip(dataset):
    recs, report = _run(dataset)
    assert [r["clip_id"] for r in recs] == ["good_0000", "good_0001", "sep_0000", "sep_0001"]
    for r in recs:
        record_spec.validate_record(r)
        assert r["frames"].shape == (CLIP, 48, 80, 3) and r["frames"].dtype == np.uint8
        assert r["latents"].shape == (0, 0, 0, 0) and r["ref_latents"].shape == (0, 0, 0, 0)
        assert r["audio_features"].shape == (CLIP, 1, 16) and r["audio_features"].dtype == np.float32
        assert r["bucket"].dtype == np.int32 and BUCKET_48x80 == tuple(
            bucket_table(64 * 64)[int(r["bucket"])]
        )
    assert report.skipped_entries == {
        "video_decode_error": 1,
        "keypoints_count_mismatch": 1,
        "bad_manifest_line": 2,
        "path_outside_root": 1,
    }
    assert report.skipped_clips == {"silent_audio": 2}
    assert (report.entries_seen, report.entries_used, report.clips_written) == (8, 2, 4)
    # Frames follow the source: clip 1 of "good" starts at source frame 9.
    assert abs(int(recs[1]["frames"][0, 20, 40, 0]) - (10 + 7 * 9)) <= 3


BUCKET_48x80 = (48, 80)


def test_featurize_sets_eligibility_from_thresholds_and_stores_scores(dataset):
    recs, _ = _run(dataset)
    good, sep = recs[0], recs[2]
    assert bool(good["audio_eligible"]) and bool(good["pose_eligible"])  # lipsync 7.1, visibility 0.93
    assert not bool(sep["audio_eligible"]) and not bool(sep["pose_eligible"])  # 2.0 < 5, 0.5 < 0.8
    assert float(good["lipsync_score"]) == pytest.approx(7.1) and good["aesthetics"].dtype == np.float32
    assert math.isnan(float(sep["aesthetics"]))
    strict, _ = _run(dataset, FeaturizeOptions(**{**OPTIONS.__dict__, "lipsync_threshold": 8.0}))
    assert not bool(strict[0]["audio_eligible"])
    loose, _ = _run(dataset, FeaturizeOptions(**{**OPTIONS.__dict__, "pose_visibility_threshold": 0.4}))
    assert bool(loose[2]["pose_eligible"])


def test_featurize_resamples_keypoints_with_the_video_into_bucket_coordinates(dataset):
    recs, _ = _run(dataset)
    good, sep0, sep1 = recs[0], recs[2], recs[3]
    # 48x64 source -> 48x80 bucket: scale 1.25 to 60x80, crop 6 rows top and bottom.
    np.testing.assert_allclose(good["keypoints"][:, 0], np.tile([[0.5, 0.5, 0.9]], (CLIP, 1)), atol=1e-6)
    # 30 fps source: output frame j shows source frame round-half-down(j * 1.2); x = source index.
    source = np.ceil(np.arange(2 * CLIP) * 1.2 - 0.5 - 1e-9)
    x = np.concatenate([sep0["keypoints"][:, 7, 0], sep1["keypoints"][:, 7, 0]])
    np.testing.assert_allclose(x, source * 1.25 / 80, atol=1e-6)
    assert good["keypoints"].shape == (CLIP, 133, 3) and good["keypoints"].dtype == np.float32


def test_featurize_with_encode_fn_stores_latents_and_reference_latents(dataset):
    frames_recs, _ = _run(dataset)
    recs, report = _run(dataset, encode_fn=toy_encode)
    assert report.clips_written == 4
    for r, f in zip(recs, frames_recs, strict=True):
        record_spec.validate_record(r)
        x = f["frames"].astype(np.float32) / 127.5 - 1.0  # (F, H, W, 3)
        assert r["frames"].shape == (0, 0, 0, 3)
        np.testing.assert_allclose(r["latents"], toy_encode(x[None])[0], atol=1e-6)
        idx = r["ref_frame_index"]
        np.testing.assert_array_equal(idx, reference_indices(CLIP, 2))
        np.testing.assert_allclose(r["ref_latents"], toy_encode(x[idx][:, None])[:, 0], atol=1e-6)
        assert r["latents"].shape == (3, 6, 10, 4) and r["ref_latents"].shape == (2, 6, 10, 4)


def test_featurize_marks_nan_features_as_skipped_clips(dataset):
    nan_encode = lambda frames: np.full_like(toy_encode(frames), np.nan)
    recs, report = _run(dataset, encode_fn=nan_encode)
    assert recs == [] and report.skipped_clips == {"silent_audio": 2, "nan_features": 4}


def test_featurize_counts_an_encoder_exception_as_a_skipped_clip(dataset):
    def failing_encode(frames: np.ndarray) -> np.ndarray:
        raise RuntimeError("encoder out of memory")

    recs, report = _run(dataset, encode_fn=failing_encode)
    assert recs == [] and report.skipped_clips == {"silent_audio": 2, "featurize_error": 4}
    assert any("encoder out of memory" in e["message"] for e in report.examples)


def test_featurize_split_option_keeps_only_that_split(dataset):
    recs, _ = _run(dataset, FeaturizeOptions(**{**OPTIONS.__dict__, "split": "test"}))
    assert [r["clip_id"] for r in recs] == ["sep_0000", "sep_0001"] and {r["split"] for r in recs} == {"test"}


def test_featurize_stride_and_max_clips_control_segments(dataset):
    opts = FeaturizeOptions(**{**OPTIONS.__dict__, "clip_stride": 4, "max_clips_per_video": 3})
    recs, _ = _run(dataset, opts)
    good = [r for r in recs if r["clip_id"].startswith("good")]
    assert len(good) == 3  # starts 0, 4, 8 of the possible 0..16
    assert abs(int(good[1]["frames"][0, 20, 40, 0]) - (10 + 7 * 4)) <= 3


def test_report_to_json_round_trips_and_summary_names_reasons(dataset, tmp_path):
    _, report = _run(dataset)
    report.to_json(tmp_path / "report.json")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data == report.to_dict() and FeaturizeReport(**data).to_dict() == data
    text = report.summary()
    assert "4 clips from 2 of 8 entries" in text and "keypoints_count_mismatch: 1" in text
    assert any(e["reason"] == "video_decode_error" and "broken.mp4" in e["message"] for e in data["examples"])


def test_featurize_in_worker_processes_matches_serial_order_and_values(dataset):
    serial, serial_report = _run(dataset, encode_fn=toy_encode)
    parallel, parallel_report = _run(dataset, encode_fn=toy_encode, num_workers=2)
    assert [r["clip_id"] for r in parallel] == [r["clip_id"] for r in serial]
    for a, b in zip(serial, parallel, strict=True):
        for key in ("latents", "ref_latents", "audio_features", "keypoints"):
            np.testing.assert_array_equal(a[key], b[key])
    assert parallel_report.to_dict() == serial_report.to_dict()


def test_worker_crash_skips_that_entry_and_the_job_continues(tmp_path):
    write_mp4(tmp_path / "a.mp4", num_frames=10)
    write_mp4(tmp_path / "white.mp4", num_frames=10, grey=255)
    lines = [dict(clip_id=n, video=v) for n, v in [("a", "a.mp4"), ("white", "white.mp4"), ("b", "a.mp4")]]
    run = featurize_manifest(_write_manifest(tmp_path, lines), OPTIONS, num_workers=2, progress=False,
                             encode_fn=crashing_encode)  # fmt: skip
    recs = list(run)
    assert [r["clip_id"] for r in recs] == ["a_0000", "b_0000"]
    assert run.report.skipped_entries == {"worker_crashed": 1}
    assert run.report.examples[0]["clip_id"] == "white"


# ---------------------------------------------------------------------------------------------
# Text encoder and wav2vec2 inside featurization
# ---------------------------------------------------------------------------------------------


def _save_tokenizer(path: Path) -> int:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    words = ["a man talks", "a woman sings a song", "person with red hair"]
    tok.train_from_iterator(words, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(path)
    return fast.vocab_size


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    from transformers import T5Config, T5EncoderModel

    path = tmp_path_factory.mktemp("t5")
    vocab = _save_tokenizer(path)
    config = T5Config(
        vocab_size=vocab,
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    T5EncoderModel(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("kind", ["t5", "umt5"])
def test_text_encoder_pads_truncates_masks_and_matches_the_model(tmp_path, kind):
    import torch
    from transformers import T5EncoderModel, UMT5Config, UMT5EncoderModel

    from data_pipeline.text_features import TextEncoder

    vocab = _save_tokenizer(tmp_path)
    cfg = dict(vocab_size=vocab, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0)
    if kind == "t5":
        from transformers import T5Config

        model = T5EncoderModel(T5Config(**cfg))
    else:
        model = UMT5EncoderModel(UMT5Config(**cfg))
    model.save_pretrained(tmp_path)
    encoder = TextEncoder(tmp_path, max_len=6)
    emb, mask = encoder("a man talks")
    assert emb.shape == (6, 16) and emb.dtype == np.float32 and mask.dtype == bool
    np.testing.assert_array_equal(mask, [True, True, True, False, False, False])
    assert np.all(emb[3:] == 0)
    ids = torch.tensor([encoder.tokenizer("a man talks")["input_ids"]])
    with torch.no_grad():
        ref = type(model).from_pretrained(tmp_path).eval()(input_ids=ids).last_hidden_state[0].numpy()
    err = np.abs(emb[:3] - ref).max()
    assert err < 1e-5, f"text embedding differs from the {kind} encoder by max {err}"
    _, long_mask = encoder("a woman sings a song person with red hair")
    assert long_mask.all() and long_mask.shape == (6,)


def test_featurize_with_t5_text_and_wav2vec2_audio(dataset, t5_dir, tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        vocab_size=4,
    )
    Wav2Vec2Model(config).save_pretrained(tmp_path / "w2v")
    opts = FeaturizeOptions(
        **{
            **OPTIONS.__dict__,
            "audio_frontend": "wav2vec2",
            "audio_model_dir": str(tmp_path / "w2v"),
            "audio_layers": (1, 2),
            "text_encoder_dir": str(t5_dir),
            "text_max_len": 8,
        }
    )
    recs, report = _run(dataset, opts)
    assert report.clips_written == 4
    good = recs[0]
    record_spec.validate_record(good)
    assert good["audio_features"].shape == (CLIP, 2, 16)
    assert good["text_embedding"].shape == (8, 16) and good["text_mask"].tolist() == [True] * 3 + [False] * 5
    # "sep" has no caption: only the first token is valid, as in the design's null text.
    assert recs[2]["text_mask"].tolist() == [True] + [False] * 7


@pytest.mark.slow
def test_featurize_vae_latents_vs_reference(tmp_path):
    """A tiny diffusers AutoencoderKLHunyuanVideo saved to disk: stored latents and reference
    latents equal diffusers' scaled posterior mean of the stored frames."""
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 3,
        up_block_types=("HunyuanVideoUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8),
        layers_per_block=1,
        norm_num_groups=2,
    ).eval()
    vae.save_pretrained(tmp_path / "vae")
    write_mp4(tmp_path / "v.mp4", num_frames=5)
    _write_manifest(tmp_path, [dict(clip_id="v", video="v.mp4")])
    base = dict(OPTIONS.__dict__, pixel_budget=32 * 32, clip_frames=5, num_ref_candidates=1)
    frames_rec = list(
        featurize_manifest(tmp_path / "manifest.jsonl", FeaturizeOptions(**base), progress=False)
    )
    opts = FeaturizeOptions(**{**base, "vae_path": str(tmp_path / "vae")})
    rec = list(featurize_manifest(tmp_path / "manifest.jsonl", opts, progress=False))[0]
    record_spec.validate_record(rec)
    x = frames_rec[0]["frames"].astype(np.float32) / 127.5 - 1.0  # (F, H, W, 3)

    def reference(video: np.ndarray) -> np.ndarray:  # (B, F, H, W, 3) -> (B, T, h, w, C)
        with torch.no_grad():
            mean = vae.encode(torch.from_numpy(video).permute(0, 4, 1, 2, 3)).latent_dist.mean
        return (mean * vae.config.scaling_factor).permute(0, 2, 3, 4, 1).numpy()

    expected = reference(x[None])[0]
    assert rec["latents"].shape == expected.shape == (2, 4, 6, 4)
    err = np.abs(rec["latents"] - expected).max()
    assert err < 1e-4, f"stored latents differ from diffusers' encode by max {err}"
    idx = rec["ref_frame_index"]
    ref_err = np.abs(rec["ref_latents"] - reference(x[idx][:, None])[:, 0]).max()
    assert ref_err < 1e-4, f"reference latents differ from diffusers' single-frame encode by max {ref_err}"
