"""grain pipeline: batch format, masks, bucketing, determinism, resume, sharding, mixing and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from configs.base import get_base_config
from data_pipeline import build, grain_pipeline, heatmaps, masking, tfds_builder
from data_pipeline.synthetic import synthetic_record
from tests.data_pipeline.test_tfds_builder import _build_args, _raw_manifest

SHAPES = {0: (4, 4), 1: (2, 6)}  # bucket -> latent (h, w)
# bucket -> latent frames: 2 is too short for motion frames (latent frames 0, 1), 3 leaves one to predict
LATENT_FRAMES = {0: 2, 1: 3}


def _write(path, n_per_bucket=8, seed=0, **kw):
    rng = np.random.default_rng(seed)
    recs = []
    for bucket, hw in SHAPES.items():
        for i in range(n_per_bucket):
            k = len(recs)
            recs.append(
                synthetic_record(
                    rng,
                    f"s{seed}_b{bucket}_{i}",
                    bucket=bucket,
                    latent_hw=hw,
                    latent_frames=LATENT_FRAMES[bucket],
                    audio_eligible=kw.get("audio_eligible", k % 3 != 0),
                    pose_eligible=kw.get("pose_eligible", k % 2 == 0),
                    num_refs=3,
                    frames_only=kw.get("frames_only", False),
                )
            )
    tfds_builder.write_dataset(recs, path)
    return {r["clip_id"]: r for r in recs}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips")
    recs = _write(path)
    by_latents = {r["latents"].tobytes(): r for r in recs.values()}
    return str(path), by_latents


def _config(data_dir, stage=3, batch_size=4, seed=0):
    cfg = get_base_config(stage, "tiny")
    cfg.data.dir = data_dir
    cfg.batch_size = batch_size
    cfg.seed = seed
    cfg.model.text_dim, cfg.model.audio_layers, cfg.model.audio_dim = 8, 2, 4
    cfg.shape.text_len = 4
    return cfg


def _take(it, n):
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def _assert_batches_equal(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_batches_have_training_format_and_one_bucket_shape_each(dataset):
    path, _ = dataset
    batches = _take(grain_pipeline.make_train_iterator(_config(path)), 8)
    seen = set()
    for b in batches:
        _, t, h, w, c = b["latents"].shape
        seen.add((h, w))
        f = 1 + 4 * (t - 1)
        assert b["ref_latents"].shape == (4, 1, h, w, c)
        assert b["text_emb"].shape == (4, 4, 8) and b["text_mask"].dtype == np.bool_
        assert b["audio_feats"].shape == (4, f, 2, 4)
        assert b["pose_heatmaps"].shape == (4, f, 2 * h, 2 * w, 21)
        assert b["motion_mask"].shape == (4, t) and b["condition_mask"].shape == (4, 5)
        assert set(b) == {
            "latents", "ref_latents", "text_emb", "text_mask", "audio_feats",
            "pose_heatmaps", "motion_mask", "condition_mask",
        }  # fmt: skip
    assert seen == set(SHAPES.values()), "both buckets should be drawn"


def test_masks_follow_ratios_and_eligibility_and_dropped_conditions_are_zeroed(dataset):
    path, by_latents = dataset
    cfg = _config(path, batch_size=8)
    it = grain_pipeline.make_train_iterator(cfg)
    masks, eligible, ref_choice = [], [], []
    for b in _take(it, 250):  # 2,000 samples
        for i in range(8):
            rec = by_latents[b["latents"][i].tobytes()]
            cm = b["condition_mask"][i]
            masks.append(cm)
            t = rec["latents"].shape[0]
            eligible.append(masking.eligibility_from_record(rec, t))
            if not cm[2]:
                assert not b["audio_feats"][i].any()
            if not cm[3]:
                assert not b["pose_heatmaps"][i].any()
            else:
                assert b["pose_heatmaps"][i].max() > 0
            if cm[1]:
                hits = [r for r in range(3) if np.array_equal(rec["ref_latents"][r], b["ref_latents"][i, 0])]
                ref_choice.append(hits[0])
            else:
                assert not b["ref_latents"][i].any()
            assert b["motion_mask"][i].tolist() == [bool(cm[4])] * 2 + [False] * (t - 2)
    masks, eligible = np.array(masks), np.array(eligible)
    assert not np.any(masks & ~eligible), "an ineligible condition was active"
    ratios = masking.ratios_vector(cfg.condition_ratios)
    for c, name in enumerate(masking.CONDITIONS):
        n = eligible[:, c].sum()
        freq, p = masks[eligible[:, c], c].mean(), ratios[c]
        assert abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / n), f"{name}: {freq:.3f} vs {p} over {n}"
    assert set(ref_choice) == {0, 1, 2}, "the reference should be drawn among all candidates"


def test_iterator_is_deterministic_for_a_seed(dataset):
    path, _ = dataset
    a = _take(grain_pipeline.make_train_iterator(_config(path)), 5)
    b = _take(grain_pipeline.make_train_iterator(_config(path)), 5)
    c = _take(grain_pipeline.make_train_iterator(_config(path, seed=1)), 5)
    _assert_batches_equal(a, b)
    assert any(not np.array_equal(x["latents"], y["latents"]) for x, y in zip(a, c, strict=True))


def test_set_state_resumes_exactly_across_epochs(dataset):
    path, _ = dataset
    it = grain_pipeline.make_train_iterator(_config(path))
    assert it.summary["datasets"][0]["batches_per_epoch"] == 4
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    want = _take(it, 7)  # crosses into epoch 2
    resumed = grain_pipeline.make_train_iterator(_config(path))
    resumed.set_state(state)
    _assert_batches_equal(want, _take(resumed, 7))


def test_worker_processes_yield_the_same_batches_as_in_process(dataset):
    path, _ = dataset
    cfg = _config(path)
    want = _take(grain_pipeline.make_train_iterator(cfg), 3)
    cfg.data.worker_count = 1
    _assert_batches_equal(want, _take(grain_pipeline.make_train_iterator(cfg), 3))


def test_two_processes_read_disjoint_shards_that_cover_the_data_with_matching_shapes(dataset):
    path, by_latents = dataset
    cfg = _config(path, batch_size=4)
    steps = 4  # one epoch: 2 buckets x 8 records / (2 processes x 2 per process)
    p0 = _take(grain_pipeline.make_train_iterator(cfg, 0, 2), steps)
    p1 = _take(grain_pipeline.make_train_iterator(cfg, 1, 2), steps)
    ids = [set(), set()]
    for a, b in zip(p0, p1, strict=True):
        assert a["latents"].shape == b["latents"].shape
        assert a["latents"].shape[:2] == (2, LATENT_FRAMES[1 if a["latents"].shape[2:4] == SHAPES[1] else 0])
        for p, batch in enumerate((a, b)):
            ids[p].update(by_latents[x.tobytes()]["clip_id"] for x in batch["latents"])
    assert ids[0].isdisjoint(ids[1])
    assert ids[0] | ids[1] == {r["clip_id"] for r in by_latents.values()}


def test_mixture_draws_data_dirs_in_weight_proportion(dataset, tmp_path):
    path, _ = dataset
    other = _write(tmp_path, seed=7)
    other_latents = {r["latents"].tobytes() for r in other.values()}
    cfg = _config(f"{path},{tmp_path}")
    cfg.data.weights = "1,3"
    batches = _take(grain_pipeline.make_train_iterator(cfg), 8)
    from_other = [b["latents"][0].tobytes() in other_latents for b in batches]
    assert sum(from_other) == 6


def test_frames_only_dataset_yields_frames_and_ref_frame(tmp_path):
    recs = _write(tmp_path, n_per_bucket=4, frames_only=True)
    b = _take(grain_pipeline.make_train_iterator(_config(str(tmp_path))), 1)[0]
    assert "latents" not in b and b["frames"].dtype == np.uint8
    n, f, hh, ww, _ = b["frames"].shape
    assert b["ref_frame"].shape == (n, 1, hh, ww, 3)
    assert b["pose_heatmaps"].shape == (n, f, hh // 8 * 2, ww // 8 * 2, 21)
    for i in range(n):
        if b["condition_mask"][i, 1]:
            rec = next(r for r in recs.values() if np.array_equal(r["frames"], b["frames"][i]))
            assert any(np.array_equal(b["ref_frame"][i, 0], rec["frames"][k]) for k in rec["ref_frame_index"])


def test_bad_record_is_skipped_replaced_and_counted(dataset, monkeypatch):
    path, _ = dataset
    real_open = tfds_builder.open_data_source

    class Corrupt:
        def __init__(self, source):
            self.source = source

        def __len__(self):
            return len(self.source)

        def __getitem__(self, i):
            if i in (0, 5):
                raise OSError(f"corrupt record {i}")
            return self.source[i]

    monkeypatch.setattr(tfds_builder, "open_data_source", lambda *a: Corrupt(real_open(*a)))
    it = grain_pipeline.make_train_iterator(_config(path))
    batches = _take(it, 8)  # two epochs: each record is drawn twice
    assert all(b["latents"].shape[0] == 4 for b in batches)
    assert it.skipped_records == 4 and it.get_state()["skipped_records"] == 4


def test_stage_without_required_pool_or_data_gives_clear_errors(tmp_path):
    _write(tmp_path / "noaudio", audio_eligible=False)
    with pytest.raises(ValueError, match="trains audio .* no record .* audio-eligible"):
        grain_pipeline.make_train_iterator(_config(str(tmp_path / "noaudio"), stage=2))
    grain_pipeline.make_train_iterator(_config(str(tmp_path / "noaudio"), stage=1)).close()
    with pytest.raises(FileNotFoundError, match="no built dataset"):
        grain_pipeline.make_train_iterator(_config(str(tmp_path / "missing")))
    index_path = tfds_builder.dataset_version_dir(tmp_path / "noaudio") / tfds_builder.INDEX_FILE
    with np.load(index_path) as z:
        arrays = {k: (np.zeros_like(z[k]) if k.endswith("/valid") else z[k]) for k in z.files}
    np.savez(index_path, **arrays)
    with pytest.raises(ValueError, match="no readable record"):
        grain_pipeline.make_train_iterator(_config(str(tmp_path / "noaudio"), stage=1))
    with pytest.raises(ValueError, match="no bucket has batch_size=64"):
        grain_pipeline.make_train_iterator(_config(_small_dataset(tmp_path), batch_size=64))


def _small_dataset(tmp_path):
    _write(tmp_path / "small", n_per_bucket=2)
    return str(tmp_path / "small")


def test_batch_plan_is_a_pure_function_of_the_index_under_concurrent_threads():
    from concurrent.futures import ThreadPoolExecutor

    members = [np.arange(0, 40), np.arange(40, 64), np.arange(64, 70)]
    serial = grain_pipeline._Plan(members, 2, seed=3, dataset_id=0, process=(0, 1))
    want = [serial[j] for j in range(200)]
    shared = grain_pipeline._Plan(members, 2, seed=3, dataset_id=0, process=(0, 1))
    order = np.random.default_rng(0).permutation(200)
    with ThreadPoolExecutor(8) as pool:
        got = dict(zip(order, pool.map(shared.__getitem__, order), strict=True))
    for j in range(200):
        assert got[j][0] == want[j][0] and np.array_equal(got[j][1], want[j][1]), f"batch {j} differs"
    per_epoch = [want[j][0] for j in range(serial.per_epoch)]
    assert [per_epoch.count(g) for g in range(3)] == [20, 12, 3], "groups drawn in proportion to their data"


def test_without_shuffle_every_epoch_repeats_the_same_batches_in_bucket_order(dataset):
    path, _ = dataset
    cfg = _config(path)
    cfg.data.shuffle = False
    batches = _take(grain_pipeline.make_train_iterator(cfg), 8)  # two epochs of 4
    for a, b in zip(batches[:4], batches[4:], strict=True):
        np.testing.assert_array_equal(a["latents"], b["latents"])
    assert [b["latents"].shape[2:4] for b in batches[:4]] == [SHAPES[0]] * 2 + [SHAPES[1]] * 2


def test_dataset_from_build_cli_without_text_encoder_trains_with_text_ratio_zero(tmp_path):
    manifest = _raw_manifest(tmp_path / "raw", good=2)
    assert build.main(_build_args(manifest, tmp_path / "out")) == 0
    cfg = _config(str(tmp_path / "out"), stage=2, batch_size=2)
    cfg.model.audio_layers, cfg.model.audio_dim = 1, 8  # log-mel: 1 group of 8 bins per frame
    with pytest.raises(ValueError, match="trains text .* condition_ratios.text=0"):
        grain_pipeline.make_train_iterator(cfg)
    cfg.condition_ratios.text = 0.0
    it = grain_pipeline.make_train_iterator(cfg)
    b = _take(it, 1)[0]
    assert it.skipped_records == 0
    assert b["frames"].shape[:2] == (2, 9) and b["audio_feats"].shape == (2, 9, 1, 8)
    assert not b["condition_mask"][:, 0].any() and b["text_mask"][:, 0].all() and not b["text_emb"].any()


@pytest.mark.parametrize(
    ("weight", "key", "rasterise"),
    [
        ("flow.lip_weight", "lip_mask", heatmaps.mouth_mask),
        ("flow.hand_weight", "hand_mask", heatmaps.hand_mask),
        ("model.audio_gate", "audio_region", heatmaps.mouth_mask),
    ],
)
def test_region_weight_adds_each_clips_landmark_mask(dataset, weight, key, rasterise):
    """With flow.lip_weight (flow.hand_weight, model.audio_gate) the batch carries lip_mask (hand_mask,
    audio_region) (B, T, h, w): the record's mouth (hand) landmarks on the latent grid, whether or not pose
    is on; zeros for a clip without keypoints."""
    path, by_latents = dataset
    cfg = _config(path)
    section, name = weight.split(".")
    cfg[section][name] = True if name == "audio_gate" else 5.0
    batches = _take(grain_pipeline.make_train_iterator(cfg), 6)
    with_kp = without_kp = 0
    for b in batches:
        assert b[key].shape == b["latents"].shape[:-1] and b[key].dtype == np.float32
        for i in range(b["latents"].shape[0]):
            rec = by_latents[b["latents"][i].tobytes()]
            h, w = rec["latents"].shape[1:3]
            if rec["keypoints"].shape[0]:
                with_kp += 1
                np.testing.assert_array_equal(b[key][i], rasterise(rec["keypoints"], h, w))
            else:
                without_kp += 1
                assert not b[key][i].any()
    assert with_kp and without_kp
    plain = _take(grain_pipeline.make_train_iterator(_config(path)), 1)[0]
    assert "lip_mask" not in plain and "hand_mask" not in plain and "audio_region" not in plain
