"""VAE trainer (launch/train_vae.py + omnihuman_jax/vae_train_step.py): learning, exact resume, export."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from data_pipeline import tfds_builder
from data_pipeline.synthetic import synthetic_record
from launch import train_vae
from omnihuman_jax import vae_train_step as vts
from omnihuman_jax.interop.diffusers_vae import load_vae
from omnihuman_jax.models.vae import encode_video

STEPS = 8


def _smooth_frames(rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
    """A coloured square moving over a gradient: (F, H, W, 3) uint8, learnable in a few steps."""
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 255 / size, yy * 255 / size, np.full_like(xx, 128.0)], -1)
    colour = rng.integers(0, 256, 3)
    frames = np.repeat(base[None], num_frames, 0)
    for f in range(num_frames):
        y, x = 2 + f, 3 + f
        frames[f, y : y + 6, x : x + 6] = colour
    return frames.astype(np.uint8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    recs = []
    for i in range(2):
        rec = synthetic_record(rng, f"clip{i}", latent_frames=2, latent_hw=(2, 2), frames_only=True)
        rec["frames"] = _smooth_frames(rng, rec["num_frames"], 16)
        recs.append(rec)
    tfds_builder.write_dataset(recs, path)
    return str(path)


def _config(**overrides):
    cfg = train_vae.default_config()
    cfg.update(
        total_steps=STEPS, batch_size=2, clip_frames=5, crop_size=0, block_out_channels=(8, 8, 8, 8),
        latent_channels=4, norm_num_groups=4, log_every=1, checkpoint_every=4, stats_batches=1,
        mesh=dict(data=2, fsdp=1, tensor=-1),
    )  # fmt: skip
    cfg.optimizer.lr, cfg.optimizer.warmup_steps = 5e-3, 1
    cfg.update(overrides)
    return cfg


def _losses(workdir) -> list[float]:
    return [json.loads(line)["loss"] for line in (workdir / "vae_metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    straight = tmp_path_factory.mktemp("straight")
    train_vae.train_vae(_config(), data_dir, str(straight))
    split = tmp_path_factory.mktemp("split")
    first = train_vae.train_vae(_config(stop_at=STEPS // 2), data_dir, str(split))
    second = train_vae.train_vae(_config(), data_dir, str(split))
    return straight, split, first, second


def test_a_few_steps_on_a_tiny_dataset_reduce_the_loss(runs):
    straight = runs[0]
    losses = _losses(straight)
    assert len(losses) == STEPS and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), losses


def test_stopped_run_resumes_from_its_checkpoint_to_the_same_weights(runs):
    straight, split, first, second = runs
    assert first["step"] == STEPS // 2 and second["step"] == STEPS
    _, p_straight = load_vae(straight / "vae")
    _, p_split = load_vae(split / "vae")
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), p_straight, p_split))
    assert max(diffs) < 1e-5, f"resumed run differs from the straight run by up to {max(diffs)}"
    assert _losses(split) == pytest.approx(_losses(straight), rel=1e-5)


def test_saved_vae_loads_with_load_vae_and_gives_unit_scale_latents(runs, data_dir):
    straight = runs[0]
    cfg, params = load_vae(straight / "vae")
    assert cfg.latent_channels == 4 and cfg.block_out_channels == (8, 8, 8, 8)
    frames = train_vae.ClipFrames(data_dir, "omnihuman_clips", "train", 2, 5, 0).batch(0)
    latents = np.asarray(encode_video(cfg, params, vts.frames_to_unit_range(frames)))  # (2, 2, 2, 2, 4)
    assert latents.shape == (2, 2, 2, 2, 4)
    assert abs(latents.mean()) < 0.05 and latents.std() == pytest.approx(1.0, abs=0.05)


def test_vae_params_are_sharded_by_the_config_rules(data_dir):
    from omnihuman_jax import sharding as shd

    cfg = train_vae.vae_config_from(_config())
    mesh = shd.make_mesh(dict(data=1, fsdp=2, tensor=-1))
    rules = (("conv_out", "fsdp"), ("conv_in", None), ("norm", None), ("null", None))
    sh = vts.vae_param_shardings(cfg, mesh, rules)
    kernel = sh["encoder"]["conv_in"]["conv"]["kernel"]
    assert kernel.spec[-1] == "fsdp" and all(a is None for a in kernel.spec[:-1])
    bad = (("conv_out", "fsdp"), ("conv_in", "fsdp"), ("norm", None), ("null", None))
    with pytest.raises(ValueError, match="more than once"):
        vts.vae_param_shardings(cfg, mesh, bad)


def test_frames_of_a_latents_dataset_are_refused_with_a_clear_error(tmp_path):
    rng = np.random.default_rng(1)
    tfds_builder.write_dataset([synthetic_record(rng, "lat0"), synthetic_record(rng, "lat1")], tmp_path)
    with pytest.raises(ValueError, match="without --vae"):
        train_vae.ClipFrames(str(tmp_path), "omnihuman_clips", "train", 2, 5, 0)


def test_crop_size_reaches_the_clip_batches(data_dir):
    plain = train_vae.ClipFrames(data_dir, "omnihuman_clips", "train", 2, 5, 0)
    cropped = train_vae.ClipFrames(data_dir, "omnihuman_clips", "train", 2, 5, 0, crop=8)
    assert plain.batch(0).shape == (2, 5, 16, 16, 3)
    assert cropped.batch(0).shape == (2, 5, 8, 8, 3)


def test_region_maps_are_the_landmark_boxes_of_each_clip_and_follow_its_crop(data_dir):
    from data_pipeline.heatmaps import landmark_regions

    plain = train_vae.ClipFrames(data_dir, "omnihuman_clips", "train", 2, 5, 0)
    assert plain.batch_with_regions(0)[1] is None
    with_regions = train_vae.ClipFrames(data_dir, "omnihuman_clips", "train", 2, 5, 0, region_margin=0.1)
    frames, regions = with_regions.batch_with_regions(0)
    np.testing.assert_array_equal(frames, plain.batch(0))  # the same clips either way
    assert regions.shape == (2, 5, 16, 16) and regions.any()
    want = []
    for i in range(len(with_regions.source)):  # each clip's map is its record's boxes at some start
        kp = np.asarray(with_regions.source[i]["keypoints"])
        want += [landmark_regions(kp[s : s + 5], 16, 16, margin=1.6) for s in range(kp.shape[0] - 4)]
    for r in regions:
        assert any(np.array_equal(r, w) for w in want)
    cropped = train_vae.ClipFrames(data_dir, "omnihuman_clips", "train", 2, 5, 0, crop=8, region_margin=0.1)
    frames, regions = cropped.batch_with_regions(0)
    assert frames.shape == (2, 5, 8, 8, 3) and regions.shape == (2, 5, 8, 8)


def test_region_l1_trains_and_logs_its_term(data_dir, tmp_path):
    cfg = _config(total_steps=2, image_steps=1)
    cfg.loss.region_l1 = 1.0
    last = train_vae.train_vae(cfg, data_dir, str(tmp_path))
    assert last["step"] == 2 and last["region_l1"] > 0
    assert all("region_l1" in json.loads(line) for line in (tmp_path / "vae_metrics.jsonl").open())


def test_temporal_l1_and_video_lr_restart_train_and_log(data_dir, tmp_path):
    cfg = _config(total_steps=3, image_steps=1)
    cfg.loss.temporal_l1 = 1.0
    cfg.video_lr_restart = True
    last = train_vae.train_vae(cfg, data_dir, str(tmp_path))
    assert last["step"] == 3 and last["temporal_l1"] > 0
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "vae_metrics.jsonl").open()]
    assert lrs[1] == 0.0 and lrs[2] == pytest.approx(cfg.optimizer.lr)  # the video phase warms up again


def test_curriculum_trains_on_single_frames_before_image_steps_then_on_clips():
    clips = np.arange(2 * 5 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 5, 4, 4, 3)
    early = train_vae.curriculum_frames(clips, step=2, image_steps=3)
    np.testing.assert_array_equal(early, clips[:, :1])
    np.testing.assert_array_equal(train_vae.curriculum_frames(clips, step=3, image_steps=3), clips)
    np.testing.assert_array_equal(train_vae.curriculum_frames(clips, step=0, image_steps=0), clips)


@pytest.mark.parametrize("total_steps", [3, 2], ids=["enters-video-phase", "image-only"])
def test_vae_is_causally_inflated_when_the_image_phase_ends(data_dir, tmp_path, total_steps):
    """lr 0 keeps the weights at their init, so the export shows exactly what the inflation did."""
    config = _config(total_steps=total_steps, image_steps=2)
    config.optimizer.lr = 0.0
    train_vae.train_vae(config, data_dir, str(tmp_path))
    cfg, params = load_vae(tmp_path / "vae")
    init = vts.init_vae(train_vae.vae_config_from(config), jax.random.key(config.seed))
    want = vts.inflate_causal(init)["decoder"]["conv_in"]["conv"]["kernel"]
    got = params["decoder"]["conv_in"]["conv"]["kernel"]  # (3, 3, 3, C_in, C_out)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.any(got[:-1])


@pytest.mark.parametrize("key", ["loss.region_l1", "loss.motion_l1", "loss.temporal_l1", "region_margin"])
def test_negative_loss_weight_or_margin_fails_at_start_naming_the_key(tmp_path, key):
    cfg = _config()
    if key.startswith("loss."):
        cfg.loss[key[5:]] = -1.0
    else:
        cfg[key] = -1.0
    with pytest.raises(ValueError, match=f"{key}=-1.0: must be >= 0"):
        train_vae.train_vae(cfg, str(tmp_path / "no_data"), str(tmp_path / "w"))
