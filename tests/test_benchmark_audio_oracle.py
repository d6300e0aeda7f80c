"""benchmarks/audio_oracle.py: the oracle measures the lips, codes them by place, survives a copy."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.audio_oracle import (
    INNER_LIP,
    lip_opening,
    oracle_record,
    parse_override,
    place_code,
    swapped_order,
    write_oracle_dataset,
)
from data_pipeline import tfds_builder
from data_pipeline.synthetic import synthetic_record


def _keypoints_with_opening(openings_px: list[float], height: int) -> np.ndarray:
    kp = np.full((len(openings_px), 133, 3), 0.5, np.float32)
    n = INNER_LIP[1] - INNER_LIP[0]
    for f, o in enumerate(openings_px):
        # inner lip points spread between y = 0.5 - o/2 and 0.5 + o/2 (in pixels of a `height` frame)
        kp[f, INNER_LIP[0] : INNER_LIP[1], 1] = 0.5 + (o / height) * (np.linspace(0, 1, n) - 0.5)
    return kp


def test_lip_opening_is_the_inner_lip_height_in_pixels():
    kp = _keypoints_with_opening([0.0, 2.0, 5.5], height=64)
    kp[:, 71:83, 1] = 0.0  # the outer lip is not part of the opening
    np.testing.assert_allclose(lip_opening(kp, 64), [0.0, 2.0, 5.5], atol=1e-5)
    np.testing.assert_allclose(lip_opening(kp, 128), [0.0, 4.0, 11.0], atol=1e-5)


def test_place_code_peaks_at_the_value_and_keeps_it_through_a_layer_norm():
    code = place_code(np.array([0.0, 6.4, 12.0, 6.7]), bins=16, lo=0.0, hi=12.0, width=0.6)
    assert code.shape == (4, 16)
    assert code.argmax(axis=1).tolist()[:3] == [0, 8, 15]  # bins 0.8 px apart

    def layer_norm(x):
        return (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)

    normed = layer_norm(code)
    assert np.abs(normed[1] - normed[2]).max() > 1.0  # distinct openings stay distinct after normalising
    assert np.abs(normed[1] - normed[3]).max() > 0.1  # even 0.3 px apart


def test_oracle_record_replaces_audio_by_the_code_of_its_lips_and_leaves_silent_clips():
    rng = np.random.default_rng(0)
    record = synthetic_record(rng, "c0", latent_hw=(8, 8), audio_dim=16)
    record["keypoints"] = _keypoints_with_opening([1.0, 2.0, 3.0, 4.0, 5.0], 64)
    out = oracle_record(record)
    audio = out["audio_features"]
    assert audio.shape == record["audio_features"].shape and audio.dtype == np.float32
    np.testing.assert_array_equal(audio[:, 0], audio[:, -1])  # the code repeats over layers
    want = place_code(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), audio.shape[-1], 0.0, 12.0, 0.6)
    np.testing.assert_allclose(audio[:, 0], want, atol=1e-6)
    silent = dict(record, audio_features=np.zeros((0, *record["audio_features"].shape[1:]), np.float32))
    assert oracle_record(silent) is silent
    no_pose = dict(record, keypoints=np.zeros((0, 133, 3), np.float32))
    assert oracle_record(no_pose) is no_pose


def test_swapped_order_moves_audio_between_active_samples_only():
    order = swapped_order(np.array([True, False, True, True, False]))
    assert order.tolist() == [3, 1, 0, 2, 4]
    assert sorted(order.tolist()) == list(range(5))


def test_overrides_parse_as_literals():
    assert parse_override("optimizer.lr=0.004") == ("optimizer.lr", 0.004)
    assert parse_override("flow.motion_hold=False") == ("flow.motion_hold", False)
    assert parse_override("data.dir=/tmp/x") == ("data.dir", "/tmp/x")
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        parse_override("optimizer.lr")


def test_oracle_dataset_copy_keeps_every_record_and_the_source(tmp_path):
    rng = np.random.default_rng(1)
    recs = [synthetic_record(rng, f"c{i}", latent_hw=(8, 8), audio_dim=16) for i in range(3)]
    src, out = tmp_path / "src", tmp_path / "oracle"
    tfds_builder.write_dataset(recs, src)
    assert write_oracle_dataset(src, out) == {"train": 3}
    before = tfds_builder.open_data_source(src)
    after = {r["clip_id"]: r for r in (tfds_builder.open_data_source(out)[i] for i in range(3))}
    for i in range(3):
        original = before[i]
        copied = after[original["clip_id"]]
        np.testing.assert_array_equal(copied["latents"], original["latents"])
        want = oracle_record(dict(original))["audio_features"]
        np.testing.assert_allclose(copied["audio_features"], want, atol=1e-6)
        assert not np.allclose(original["audio_features"], want)  # the source dataset is untouched


def test_missing_run_parts_are_named_before_any_work(tmp_path):
    from benchmarks.audio_oracle import main

    (tmp_path / "data").mkdir()
    with pytest.raises(SystemExit, match="vae is missing"):
        main(["--run", str(tmp_path)])
    assert not (tmp_path / "oracle_data").exists()
