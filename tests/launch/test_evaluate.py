"""launch/evaluate.py on ground-truth toy-world clips: the evaluator's calibration and its failure modes."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from data_pipeline.toyworld import generate, render
from launch import evaluate


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate.generate_dataset(
        out, num_identities=2, clips_per_identity=2, seed=3, eval_identities=1,
        audio_clean_rate=1.0, pose_clean_rate=1.0, camera_motion_rate=0.0,
    )  # fmt: skip
    return out


def test_ground_truth_clips_score_sync_above_0_9_and_pose_error_below_1px(world):
    ids = evaluate.eval_clip_ids(world)
    assert ids == ["id0001_c000", "id0001_c001"]
    per_clip = evaluate.evaluate_videos(world, {c: world / "clips" / f"{c}.mp4" for c in ids}, 25.0)
    for cid, m in per_clip.items():
        assert m["sync"] >= 0.9, (cid, m)
        assert m["pose_err_px"] <= 1.0 and m["hands_found"] >= 0.9, (cid, m)
        assert m["psnr"] >= 30.0 and m["ssim"] >= 0.9, (cid, m)
        assert m["motion_px"] > 0.1, (cid, m)


def test_a_frozen_reference_video_scores_no_sync_no_motion_and_a_large_pose_error(world):
    cid = "id0001_c000"
    truth = evaluate.load_truth(world, cid)
    frozen = np.repeat(truth["reference_frame"][None], truth["keypoints"].shape[0], 0)  # (F, H, W, 3)
    m = evaluate.score_frames(frozen, truth, 25.0)
    real = evaluate.score_frames(render.read_mp4(world / "clips" / f"{cid}.mp4"), truth, 25.0)
    assert m["sync"] < 0.2 and m["motion_px"] == 0.0
    assert m["pose_err_px"] > real["pose_err_px"] + 1.0
    assert m["psnr"] == 100.0  # the static region is untouched: identity is perfectly kept


def test_audio_of_another_clip_scores_low_sync(world):
    truth = evaluate.load_truth(world, "id0001_c000")
    other = evaluate.load_truth(world, "id0001_c001")
    frames = render.read_mp4(world / "clips" / "id0001_c000.mp4")
    swapped = dict(truth, driving_audio=other["driving_audio"])
    assert evaluate.score_frames(frames, swapped, 25.0)["sync"] < 0.5


def test_cli_scores_generated_folder_by_clip_name_and_writes_json(world, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(world / "clips" / "id0001_c001.mp4", videos / "id0001_c001.mp4")
    (videos / "unrelated.mp4").write_bytes(b"")  # not a clip of the world: ignored
    out = tmp_path / "m.json"
    assert evaluate.main(["--world", str(world), "--videos", str(videos), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert list(data["per_clip"]) == ["id0001_c001"] and data["mean"]["clips"] == 1
    assert data["mean"]["sync"] >= 0.9
    assert "| generated | 1 |" in capsys.readouterr().out


def test_cli_without_matching_videos_exits_2_with_a_message(world, tmp_path, capsys):
    assert evaluate.main(["--world", str(world), "--videos", str(tmp_path)]) == 2
    assert "no <clip_id>.mp4" in capsys.readouterr().err


def test_summary_skips_nan_metrics():
    a = dict(sync=0.5, pose_err_px=1.0, psnr=float("nan"), ssim=0.5, motion_px=1.0)
    b = dict(sync=0.7, pose_err_px=3.0, psnr=30.0, ssim=0.7, motion_px=2.0)
    s = evaluate.summarize({"a": a, "b": b})
    assert s["sync"] == pytest.approx(0.6) and s["psnr"] == 30.0 and s["clips"] == 2
    assert math.isnan(evaluate.summarize({})["sync"])


def test_swapped_audio_scores_the_truth_near_chance_while_its_own_audio_scores_above_0_9(
    world, tmp_path, capsys
):
    ids = evaluate.eval_clip_ids(world)
    videos = {c: world / "clips" / f"{c}.mp4" for c in ids}
    own = evaluate.evaluate_videos(world, videos, 25.0)
    assert all("sync_swapped" not in m for m in own.values())  # only when asked
    per_clip = evaluate.evaluate_videos(world, videos, 25.0, swap_audio=True)
    swapped = {cid: m["sync_swapped"] for cid, m in per_clip.items()}
    assert sorted(swapped) == ids
    for cid in ids:
        assert own[cid]["sync"] >= 0.9 and swapped[cid] < 0.5, (cid, own[cid]["sync"], swapped[cid])
        assert per_clip[cid]["sync"] == own[cid]["sync"]
    out = tmp_path / "m.json"
    argv = ["--world", str(world), "--truth", "--swap_audio", "--json", str(out)]
    assert evaluate.main(argv) == 0
    assert "sync against another clip's audio (chance level): " in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["mean"]["sync_swapped"] == pytest.approx(np.mean(list(swapped.values())))
    assert data["per_clip"][ids[0]]["sync_swapped"] == pytest.approx(swapped[ids[0]])


def test_swapped_audio_with_one_video_exits_2_naming_the_need_for_two(world, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(world / "clips" / "id0001_c001.mp4", videos / "id0001_c001.mp4")
    assert evaluate.main(["--world", str(world), "--videos", str(videos), "--swap_audio"]) == 2
    assert "needs at least 2 videos, got 1" in capsys.readouterr().err


def test_toyworld_score_adds_the_chance_level_only_for_two_or_more_videos(world, tmp_path):
    from launch import toyworld

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(world / "clips" / "id0001_c001.mp4", videos / "id0001_c001.mp4")
    assert "sync_swapped" not in toyworld.score(world, videos, 25.0)
    shutil.copy(world / "clips" / "id0001_c000.mp4", videos / "id0001_c000.mp4")
    both = toyworld.score(world, videos, 25.0)
    assert both["clips"] == 2 and both["sync"] >= 0.9 and both["sync_swapped"] < 0.5
