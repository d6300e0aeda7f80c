"""launch.probe_vae: the swap probe tells a VAE that uses its later latents from one that draws frame 0."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from data_pipeline.toyworld import render
from launch import probe_vae
from omnihuman_jax.interop.diffusers_vae import save_vae
from omnihuman_jax.models import vae as V


def _clips(n: int = 3, frames: int = 5, size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, frames, size, size, 3), dtype=np.uint8)


def test_a_perfect_round_trip_returns_the_later_frames_and_keeps_all_motion():
    out = probe_vae.swap_probe(lambda x: x, _clips())
    assert out["err_to_later"] == 0.0
    assert out["err_to_first"] > 50.0  # random frames differ by about 85 on average
    assert out["motion_kept"] == pytest.approx(1.0)


def test_a_round_trip_that_repeats_frame_0_is_caught():
    out = probe_vae.swap_probe(lambda x: np.repeat(x[:, :1], x.shape[1], axis=1), _clips())
    assert out["err_to_first"] == 0.0
    assert out["err_to_later"] > 50.0
    assert out["motion_kept"] == 0.0


def test_motion_kept_rejects_still_clips():
    still = np.zeros((1, 5, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="still images"):
        probe_vae.motion_kept(still, still)


def test_cli_probes_an_exported_vae_on_mp4_clips(tmp_path, capsys):
    cfg = V.VAEConfig(latent_channels=4, block_out_channels=(8, 8, 8, 8), norm_num_groups=2)
    save_vae(tmp_path / "vae", cfg, V.init_vae(cfg, jax.random.key(0)))
    (tmp_path / "clips").mkdir()
    for i, clip in enumerate(_clips(n=2, frames=6, size=32)):
        render.write_mp4(tmp_path / "clips" / f"c{i}.mp4", clip, fps=25.0)
    assert probe_vae.main(["--vae", str(tmp_path / "vae"), "--clips", str(tmp_path / "clips")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"err_to_later", "err_to_first", "motion_kept"}
    assert all(np.isfinite(v) for v in out.values())


def test_cli_names_a_folder_with_too_few_clips(tmp_path):
    (tmp_path / "clips").mkdir()
    with pytest.raises(FileNotFoundError, match="at least 2 mp4"):
        probe_vae.main(["--vae", str(tmp_path / "vae"), "--clips", str(tmp_path / "clips")])


# --- the mouth's temporal detail (--mouth) ---


def test_group_means_keep_frame_0_and_average_each_later_group_of_4():
    series = np.array([5.0, 1, 2, 3, 4, 10, 20])
    np.testing.assert_allclose(probe_vae.group_means(series), [5, 2.5, 2.5, 2.5, 2.5, 15, 15])


def test_within_group_spread_is_0_for_one_value_per_group_and_counts_whole_groups_only():
    assert probe_vae.within_group_spread(np.array([9.0, 1, 1, 1, 1, 2, 2, 2, 2, 7])) == 0.0
    # One group [0, 2, 0, 2]: std 1; the short group after it is left out.
    assert probe_vae.within_group_spread(np.array([9.0, 0, 2, 0, 2, 50])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one whole group"):
        probe_vae.within_group_spread(np.array([1.0, 2, 3]))


@pytest.fixture(scope="module")
def mouth_world(tmp_path_factory):
    from data_pipeline.toyworld import generate

    root = tmp_path_factory.mktemp("mouth") / "world"
    generate.generate_dataset(
        root, num_identities=2, clips_per_identity=1, seed=3, seconds=1.0, eval_identities=1,
        audio_clean_rate=1.0, pose_clean_rate=1.0, camera_motion_rate=0.0,
    )  # fmt: skip
    return root


def _one_frame_per_group(x: np.ndarray) -> np.ndarray:
    """A round trip that keeps one frame per latent frame: each later group of 4 shows its last frame."""
    out = x.copy()
    for start in range(1, x.shape[1], 4):
        out[:, start : start + 4] = x[:, min(start + 3, x.shape[1] - 1)][:, None]
    return out


def test_mouth_probe_keeps_all_detail_for_a_perfect_round_trip(mouth_world):
    out = probe_vae.mouth_probe(lambda x: x, mouth_world, limit=4)
    assert out["clips"] == 1.0
    assert out["sync_truth"] > 0.9  # the evaluator's calibration on ground truth
    assert out["sync_clip"] == pytest.approx(out["sync_truth"])
    assert out["sync_frames"] == pytest.approx(out["sync_truth"])
    assert out["mouth_detail_kept"] == pytest.approx(1.0)
    assert out["sync_group_means"] < out["sync_truth"]  # the lips move within a latent frame's 160 ms


def test_mouth_probe_catches_a_round_trip_with_one_mouth_per_latent_frame(mouth_world):
    out = probe_vae.mouth_probe(_one_frame_per_group, mouth_world, limit=4)
    assert out["mouth_detail_kept"] == 0.0
    assert out["sync_frames"] == pytest.approx(out["sync_truth"])  # single frames pass through unchanged
    assert out["sync_clip"] < out["sync_truth"] - 0.1


def test_cli_mouth_probe_prints_its_figures_and_names_a_missing_world(mouth_world, tmp_path, capsys):
    cfg = V.VAEConfig(latent_channels=4, block_out_channels=(8, 8, 8, 8), norm_num_groups=2)
    save_vae(tmp_path / "vae", cfg, V.init_vae(cfg, jax.random.key(0)))
    argv = ["--vae", str(tmp_path / "vae"), "--mouth"]
    assert probe_vae.main([*argv, "--world", str(mouth_world)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {
        "sync_truth",
        "sync_clip",
        "sync_frames",
        "sync_group_means",
        "mouth_detail_kept",
        "clips",
    }
    with pytest.raises(SystemExit, match="--mouth needs --world"):
        probe_vae.main(argv)
    with pytest.raises(FileNotFoundError, match="no held-out clips"):
        probe_vae.main([*argv, "--world", str(tmp_path)])


def test_generated_videos_with_per_frame_mouths_are_told_from_one_mouth_per_latent_frame(
    mouth_world, tmp_path
):
    from launch.evaluate import eval_clip_ids

    cid = eval_clip_ids(mouth_world)[0]
    truth = render.read_mp4(mouth_world / "clips" / f"{cid}.mp4")
    for name, video in [("same", truth), ("held", _one_frame_per_group(truth[None])[0])]:
        (tmp_path / name).mkdir()
        render.write_mp4(tmp_path / name / f"{cid}.mp4", video, fps=25.0)
    same = probe_vae.sample_mouth_detail(mouth_world, tmp_path / "same")
    held = probe_vae.sample_mouth_detail(mouth_world, tmp_path / "held")
    assert same["clips"] == held["clips"] == 1.0
    assert same["mouth_detail_kept"] == pytest.approx(1.0, abs=0.05)  # re-coded by the mp4 round trip
    assert held["mouth_detail_kept"] < 0.1
    assert held["sync_group_means"] == pytest.approx(held["sync"], abs=0.05)
    assert same["sync_truth_group_means"] == held["sync_truth_group_means"] < same["sync"]
    assert probe_vae.main(["--mouth", "--world", str(mouth_world), "--samples", str(tmp_path / "held")]) == 0
    with pytest.raises(SystemExit, match="--mouth needs --vae"):
        probe_vae.main(["--mouth", "--world", str(mouth_world)])
    with pytest.raises(FileNotFoundError, match="no <clip_id>.mp4"):
        probe_vae.sample_mouth_detail(mouth_world, tmp_path)
