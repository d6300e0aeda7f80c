"""SyntheticSource: batch format, masking, determinism and exact resume; synthetic_record validity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from configs.base import get_base_config
from data_pipeline import masking, records
from data_pipeline.synthetic import SyntheticSource, synthetic_record


def _config(stage: int = 3, batch_size: int = 4):
    cfg = get_base_config(stage, "tiny")
    cfg.batch_size = batch_size
    return cfg


def test_synthetic_batch_has_training_batch_shapes_and_dtypes():
    cfg = _config()
    batch = next(SyntheticSource(cfg))
    t, h, w, lt = (cfg.shape[k] for k in ("latent_frames", "latent_height", "latent_width", "text_len"))
    f, s, m = 1 + 4 * (t - 1), cfg.model.pose_heatmap_scale, cfg.model
    want = {
        "latents": ((4, t, h, w, m.latent_channels), np.float32),
        "ref_latents": ((4, 1, h, w, m.latent_channels), np.float32),
        "text_emb": ((4, lt, m.text_dim), np.float32),
        "text_mask": ((4, lt), np.bool_),
        "audio_feats": ((4, f, m.audio_layers, m.audio_dim), np.float32),
        "pose_heatmaps": ((4, f, h * s, w * s, m.pose_channels), np.float32),
        "motion_mask": ((4, t), np.bool_),
        "condition_mask": ((4, 5), np.bool_),
    }
    assert set(batch) == set(want)
    for key, (shape, dtype) in want.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key


def test_synthetic_pooled_text_appears_only_when_configured():
    cfg = _config()
    cfg.model.pooled_text_dim = 6
    assert next(SyntheticSource(cfg))["text_pooled"].shape == (4, 6)


def test_synthetic_dropped_conditions_are_zeroed_and_ratios_hold():
    cfg = _config(stage=2, batch_size=8)
    src = SyntheticSource(cfg)
    masks = []
    for _ in range(40):
        b = next(src)
        masks.append(b["condition_mask"])
        cm = b["condition_mask"]
        assert np.all(b["audio_feats"][~cm[:, 2]] == 0)
        assert np.all(b["pose_heatmaps"] == 0), "stage 2 has pose ratio 0"
        assert np.all(b["ref_latents"][~cm[:, 1]] == 0)
        assert np.all(b["text_emb"][~cm[:, 0]] == 0)
        assert np.all(b["text_mask"][~cm[:, 0]] == [True] + [False] * (cfg.shape.text_len - 1))
        assert np.array_equal(b["motion_mask"][:, :2], np.repeat(cm[:, 4:5], 2, axis=1))
    freq = np.concatenate(masks).mean(0)  # (5,)
    ratios = masking.ratios_vector(cfg.condition_ratios)
    sigma = np.sqrt(ratios * (1 - ratios) / 320)
    assert np.all(np.abs(freq - ratios) <= 4 * sigma + 1e-12), (freq, ratios)


def test_synthetic_resume_from_state_gives_identical_batches():
    cfg = _config()
    a = SyntheticSource(cfg)
    first = [next(a) for _ in range(3)]
    state = json.loads(json.dumps(a.get_state()))
    rest = [next(a) for _ in range(2)]
    b = SyntheticSource(cfg)
    b.set_state(state)
    for x, y in zip(rest, [next(b) for _ in range(2)], strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    assert not np.array_equal(first[0]["latents"], rest[0]["latents"])


def test_synthetic_processes_draw_different_halves_of_the_global_batch():
    cfg = _config(batch_size=4)
    full = [SyntheticSource(cfg, 0, 1).sample(i)["latents"] for i in range(4)]
    p0, p1 = next(SyntheticSource(cfg, 0, 2)), next(SyntheticSource(cfg, 1, 2))
    np.testing.assert_array_equal(np.concatenate([p0["latents"], p1["latents"]]), np.stack(full))
    with pytest.raises(ValueError, match="multiple of the process count"):
        SyntheticSource(_config(batch_size=3), 0, 2)


@pytest.mark.parametrize("frames_only", [False, True])
def test_synthetic_record_passes_record_validation(frames_only):
    record = synthetic_record(np.random.default_rng(0), "c0", frames_only=frames_only, pose_eligible=False)
    records.validate_record(record)
    record["audio_features"] = record["audio_features"][:2]
    with pytest.raises(records.RecordError, match="audio_features"):
        records.validate_record(record)
