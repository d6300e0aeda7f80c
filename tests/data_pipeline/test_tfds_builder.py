"""TFDS ArrayRecord storage: round trip, splits, bad records, index, crash-safe rebuild."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data_pipeline import build, records, tfds_builder
from data_pipeline.synthetic import synthetic_record
from tests.data_pipeline.test_media import write_mp4


def _records(n: int, seed: int = 0, **kw):
    rng = np.random.default_rng(seed)
    return [synthetic_record(rng, f"clip{i:03d}", bucket=i % 2, **kw) for i in range(n)]


def _files(root) -> dict[str, float]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            out[path] = os.path.getmtime(path)
    return out


def test_write_then_read_round_trips_every_record(tmp_path):
    recs = _records(6) + _records(2, seed=1, frames_only=True, pose_eligible=False, split="validation")
    recs[-1]["clip_id"] = "val1"
    recs[-2]["clip_id"] = "val0"
    report = tfds_builder.write_dataset(recs, tmp_path, name="toy_clips")
    assert report.num_records == {"train": 6, "validation": 2} and report.num_skipped == 0
    by_id = {r["clip_id"]: r for r in recs}
    for split, n in report.num_records.items():
        source = tfds_builder.open_data_source(tmp_path, "toy_clips", split)
        assert len(source) == n
        for i in range(n):
            got = source[i]
            want = by_id[got["clip_id"].decode()]
            records.validate_record(got)
            for key in records.RECORD_FIELDS[1:]:
                dtype = records.SCALAR_FIELDS.get(key) or records.TENSOR_FIELDS[key][1]
                np.testing.assert_array_equal(
                    np.asarray(got[key], dtype), np.asarray(want[key], dtype), err_msg=key
                )


def test_index_file_matches_stored_record_order(tmp_path):
    recs = _records(8, pose_eligible=False)
    recs[3]["audio_eligible"] = False
    tfds_builder.write_dataset(recs, tmp_path)
    source = tfds_builder.open_data_source(tmp_path)
    index = tfds_builder.load_index(tmp_path, tfds_builder.DEFAULT_NAME, "train", source)
    for i in range(len(source)):
        rec = source[i]
        assert index["bucket"][i] == rec["bucket"]
        assert index["audio_eligible"][i] == rec["audio_eligible"]
        assert tuple(index["shape"][i]) == rec["latents"].shape
    assert index["valid"].all() and not index["pose_eligible"].any()
    assert index["audio_eligible"].sum() == 7


def test_bad_and_duplicate_records_are_skipped_and_counted(tmp_path):
    recs = _records(4)
    recs[1]["num_frames"] = 6  # not 1 + 4k
    recs[2]["clip_id"] = recs[0]["clip_id"]
    report = tfds_builder.write_dataset(recs, tmp_path)
    assert report.num_records == {"train": 2}
    reasons = dict(report.skipped)
    assert "num_frames must be 1 + 4k" in reasons["clip001"]
    assert reasons["clip000"] == "duplicate clip_id"


def test_failed_rebuild_leaves_existing_dataset_intact(tmp_path):
    tfds_builder.write_dataset(_records(3), tmp_path)
    before = _files(tmp_path)

    def crashing():
        yield from _records(2, seed=5)
        raise RuntimeError("featurizer died")

    with pytest.raises(RuntimeError, match="featurizer died"):
        tfds_builder.write_dataset(crashing(), tmp_path)
    bad = _records(2)
    for r in bad:
        r["height"] = 0
    with pytest.raises(ValueError, match="no valid record.*existing dataset, if any, is kept"):
        tfds_builder.write_dataset(bad, tmp_path)
    assert _files(tmp_path) == before, "a failed rebuild touched the existing dataset or left temp files"
    assert len(tfds_builder.open_data_source(tmp_path)) == 3


def test_successful_rebuild_replaces_the_dataset(tmp_path):
    tfds_builder.write_dataset(_records(3), tmp_path)
    tfds_builder.write_dataset(_records(5, seed=9), tmp_path)
    assert len(tfds_builder.open_data_source(tmp_path)) == 5
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".")]
    leftovers += [p for p in os.listdir(tmp_path / tfds_builder.DEFAULT_NAME) if p.startswith(".")]
    assert leftovers == []


def test_missing_dataset_and_split_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no built dataset 'omnihuman_clips'.*data_pipeline.build"):
        tfds_builder.open_data_source(tmp_path)
    tfds_builder.write_dataset(_records(2), tmp_path)
    with pytest.raises(ValueError, match="no split 'test'"):
        tfds_builder.open_data_source(tmp_path, split="test")


def _raw_manifest(root, good: int, broken: int = 0):
    (root / "clips").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(good):
        write_mp4(root / "clips" / f"v{i}.mp4", num_frames=10)
        lines.append(dict(clip_id=f"v{i}", video=f"clips/v{i}.mp4", scores={"lipsync": 8.0}))
    for i in range(broken):
        (root / "clips" / f"bad{i}.mp4").write_bytes(b"not a video")
        lines.append(dict(clip_id=f"bad{i}", video=f"clips/bad{i}.mp4"))
    path = root / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def _build_args(manifest, out):
    return ["--manifest", str(manifest), "--out", str(out), "--pixel_budget", "4096", "--clip_frames", "9",
            "--mel_bins", "8", "--no_progress"]  # fmt: skip


def test_build_cli_writes_dataset_and_report(tmp_path, capsys):
    manifest = _raw_manifest(tmp_path / "raw", good=2, broken=1)
    assert build.main(_build_args(manifest, tmp_path / "out")) == 0
    report = json.loads((tmp_path / "out" / build.REPORT_FILE).read_text())
    assert report["clips_written"] == 2 and sum(report["skipped_entries"].values()) == 1
    assert report["written"]["num_records"] == {"train": 2}
    source = tfds_builder.open_data_source(tmp_path / "out")
    assert sorted(source[i]["clip_id"].decode()[:2] for i in range(2)) == ["v0", "v1"]
    rec = source[0]
    records.validate_record(rec)
    assert records.is_frames_only(rec) and rec["frames"].shape[0] == 9 and rec["audio_eligible"]
    assert "featurize: 2 clips" in capsys.readouterr().out


def test_build_cli_without_any_clip_fails_and_keeps_the_existing_dataset(tmp_path):
    tfds_builder.write_dataset(_records(3), tmp_path / "out")
    before = _files(tmp_path / "out")
    manifest = _raw_manifest(tmp_path / "raw", good=0, broken=2)
    assert build.main(_build_args(manifest, tmp_path / "out")) == 1
    report_path = str(tmp_path / "out" / build.REPORT_FILE)
    after = {p: m for p, m in _files(tmp_path / "out").items() if p != report_path}
    assert after == before
    assert len(tfds_builder.open_data_source(tmp_path / "out")) == 3
