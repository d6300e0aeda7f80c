"""The toy-world recipe (configs/toyworld.py) and its main job (launch/toyworld.py)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from configs.base import get_base_config
from configs.toyworld import RECIPES, STAGE_RATIOS, VAE_LOSS, get_config
from data_pipeline.toyworld import generate
from launch import toyworld as tw


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_data_shapes_match_the_model_preset(recipe):
    cfg = get_config(recipe)
    base = get_base_config(3, cfg.preset)
    assert cfg.data.clip_frames == 1 + 4 * (base.shape.latent_frames - 1)
    assert (cfg.data.mel_groups, cfg.data.mel_bins) == (base.model.audio_layers, base.model.audio_dim)
    r = cfg.vae.spatial_compression_ratio
    assert cfg.world.height == r * base.shape.latent_height and cfg.world.width == r * base.shape.latent_width
    assert dict(cfg.train)["vae.spatial_compression_ratio"] == r  # the stages check the VAE they load
    assert cfg.data.pixel_budget == cfg.world.height * cfg.world.width
    assert cfg.vae.latent_channels == base.model.latent_channels
    assert cfg.world.seconds * cfg.world.fps >= cfg.data.clip_frames


def test_stage_ratios_follow_principles_1_and_2():
    # Principle 1: stage 1 drops audio and pose; stage 2 drops pose; stage 3 uses all.
    assert STAGE_RATIOS[1]["audio"] == STAGE_RATIOS[1]["pose"] == 0.0 and STAGE_RATIOS[2]["pose"] == 0.0
    r = STAGE_RATIOS[3]
    # Principle 2: the stronger the condition, the lower its ratio; pose at audio's 0.5 is the paper's
    # final configuration (section 4.3).
    assert r["reference"] > r["audio"] >= r["pose"] > 0.0
    cfg = get_config("quick")
    stage3 = dict(cfg.stages.stage3)
    assert stage3["condition_ratios.pose"] == r["pose"] and stage3["total_steps"] > 0
    assert dict(cfg.ablations.no_audio.overrides)["condition_ratios.audio"] == 0.0
    sweep = [dict(cfg.ablations[f"pose_0{k}"].overrides)["condition_ratios.pose"] for k in (2, 5, 8)]
    assert sweep == [0.2, 0.5, 0.8]


@pytest.mark.parametrize("recipe", ["smoke", "quick", "proof"])
def test_vae_world_uses_another_seed_and_holds_nothing_out(recipe, tmp_path):
    cfg = get_config(recipe)
    assert cfg.vae_world.seed != cfg.world.seed and cfg.vae_world.eval_identities == 0
    assert cfg.vae_world.clips_per_identity == 1
    assert cfg.vae_world.seconds * cfg.vae_world.fps >= cfg.data.clip_frames  # each clip gives a window
    from benchmarks import learning_proof as lp

    assert f"own world of {cfg.vae_world.num_identities} identities" in lp.recipe_lines(cfg, tmp_path)[0]
    assert (cfg.vae_world.height, cfg.vae_world.width, cfg.vae_world.fps) == (
        cfg.world.height, cfg.world.width, cfg.world.fps,
    )  # fmt: skip


@pytest.mark.parametrize("recipe", ["smoke", "quick", "proof"])
def test_validation_world_is_a_third_seed_whose_identities_are_all_held_out(recipe):
    cfg = get_config(recipe)
    assert len({cfg.world.seed, cfg.vae_world.seed, cfg.val_world.seed}) == 3
    assert cfg.val_world.num_identities == cfg.val_world.eval_identities == cfg.world.eval_identities
    assert cfg.val_world.clips_per_identity == cfg.world.clips_per_identity


def test_validate_names_the_missing_vae_and_an_unknown_mode(tmp_path, capsys):
    assert tw.main(["--workdir", str(tmp_path), "--recipe=smoke", f"--validate={tmp_path / 'stage3'}"]) == 2
    assert "no trained VAE" in capsys.readouterr().err
    bad = ["--workdir", str(tmp_path), "--recipe=smoke", "--validate=x", "--modes=audio,dance"]
    assert tw.main(bad) == 2
    assert "choose from audio, pose, combined" in capsys.readouterr().err


def test_unknown_recipe_names_the_choices():
    with pytest.raises(ValueError, match="proof"):
        get_config("huge")


def test_overrides_become_config_flags():
    flags = tw.overrides((("total_steps", 3), ("block_out_channels", (8, 8)), ("x", (4,))))
    assert flags == ["--config.total_steps=3", "--config.block_out_channels=(8,8)", "--config.x=(4,)"]
    nested = get_config("smoke")  # a ConfigDict, as the recipe gives it
    nested.vae.loss = {"motion_l1": 1.0, "kl": 0.0}
    flags = tw.overrides(nested.vae.items())
    assert "--config.loss.motion_l1=1.0" in flags and "--config.loss.kl=0.0" in flags


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tw")
    generate.generate_dataset(
        root / "world", num_identities=2, clips_per_identity=2, seed=1, seconds=0.8, eval_identities=1,
        audio_clean_rate=1.0, pose_clean_rate=1.0, camera_motion_rate=0.0,
    )  # fmt: skip
    return root


def test_existing_world_is_kept_and_not_regenerated(tiny_world):
    cfg = get_config("smoke")
    manifest = tiny_world / "world" / "manifest.jsonl"
    before = manifest.read_text()
    assert tw.step_world(cfg, tiny_world) == tiny_world / "world"
    assert manifest.read_text() == before and not (tiny_world / "logs").exists()


def test_eval_inputs_come_from_held_out_identities_only(tiny_world):
    inputs = tw.eval_inputs(tiny_world / "world", tiny_world, count=5)
    splits = {
        e["clip_id"]: e["split"]
        for e in map(json.loads, (tiny_world / "world" / "manifest.jsonl").read_text().splitlines())
    }
    assert [i["clip_id"] for i in inputs] == ["id0001_c000", "id0001_c001"]
    assert all(splits[i["clip_id"]] == "eval" for i in inputs)
    from PIL import Image

    truth = np.load(tiny_world / "world" / "clips" / "id0001_c000.truth.npz")
    assert np.array_equal(np.asarray(Image.open(inputs[0]["image"])), truth["reference_frame"])


def test_failed_step_raises_with_the_log_tail(tmp_path):
    with pytest.raises(RuntimeError, match="failed with status"):
        tw.run_cli(["data_pipeline.toyworld.generate", "--num_identities", "0"], tmp_path, "bad.log")
    assert "usage" in (tmp_path / "logs" / "bad.log").read_text()


def _held_out_clip_id(root) -> str:
    return str(tw.eval_inputs(root / "world", root, 1)[0]["clip_id"])


def test_smoke_recipe_runs_every_step_end_to_end_and_resumes(tmp_path, monkeypatch):
    # The main job's subprocesses see the machine's devices: one on a plain CPU, not the 8 simulated
    # devices of the test session (the recipe's batches of 2 would not split over 8). The in-process scoring
    # below starts JAX if no earlier test did; start it now, with the session's 8 devices, so that the
    # changed XLA_FLAGS cannot leave later tests of this session with one device.
    assert len(jax.devices()) == 8
    flags = os.environ["XLA_FLAGS"].replace("device_count=8", "device_count=1")
    monkeypatch.setenv("XLA_FLAGS", flags)
    cfg = get_config("smoke")
    rows = tw.run_recipe(cfg, tmp_path)
    assert set(rows) == {"ground truth", "audio-driven", "pose-driven"}
    assert rows["ground truth"]["sync"] >= 0.9
    for name in ("audio-driven", "pose-driven"):
        assert rows[name]["clips"] == 1 and np.isfinite(rows[name]["motion_px"])
    # The pose-driven video was sampled with the recipe's pose guidance (a third, pose-dropped branch).
    assert f"--cfg_pose {cfg.sampling.cfg_pose}" in (tmp_path / "logs" / "sample_pose.log").read_text()
    assert (tmp_path / "vae" / "config.json").is_file() and tw.finished_step(tmp_path / "stage3") == 2
    assert (tmp_path / "frames.png").is_file() and (tmp_path / "metrics.md").read_text().count("|") > 10
    # The VAE trained on its own world, none of whose identities is a held-out one.
    vae_clips = [json.loads(x) for x in (tmp_path / "vae_world" / "manifest.jsonl").read_text().splitlines()]
    assert len(vae_clips) == cfg.vae_world.num_identities and {c["split"] for c in vae_clips} == {"train"}
    held_out = np.load(tmp_path / "world" / "clips" / f"{_held_out_clip_id(tmp_path)}.truth.npz")[
        "reference_frame"
    ]
    for c in vae_clips:
        ref = np.load(tmp_path / "vae_world" / "clips" / f"{c['clip_id']}.truth.npz")["reference_frame"]
        assert not np.array_equal(ref, held_out)
    from benchmarks import learning_proof as lp

    inputs = tw.eval_inputs(tmp_path / "world", tmp_path, 1)
    bound = lp.score_vae_reconstruction(tmp_path / "world", tmp_path / "vae", inputs, cfg.world.fps)
    assert bound["clips"] == 1 and np.isfinite(bound["psnr"]) and np.isfinite(bound["motion_px"])
    stamp = (tmp_path / "samples" / "audio").stat().st_mtime_ns
    tw.run_recipe(cfg, tmp_path)  # everything exists: all steps are skipped
    assert (tmp_path / "samples" / "audio").stat().st_mtime_ns == stamp
    # Validation: the trained stage 3 sampled on the validation world, whose identities are new.
    val = tw.validate(cfg, tmp_path, tmp_path / "stage3", ("pose",))
    assert set(val) == {"ground truth", "pose-driven"} and val["pose-driven"]["clips"] == 1
    assert val["ground truth"]["sync"] >= 0.9 and np.isfinite(val["pose-driven"]["psnr"])
    saved = json.loads((tmp_path / "validation" / "stage3.json").read_text())
    assert saved["rows"]["pose-driven"] == pytest.approx(val["pose-driven"], nan_ok=True)
    val_ids = [str(i["clip_id"]) for i in tw.eval_inputs(tmp_path / "val_world", tmp_path, 1, "val_inputs")]
    val_ref = np.load(tmp_path / "val_world" / "clips" / f"{val_ids[0]}.truth.npz")["reference_frame"]
    for world in ("world", "vae_world"):
        for f in (tmp_path / world / "clips").glob("*.truth.npz"):
            assert not np.array_equal(np.load(f)["reference_frame"], val_ref), f
    # The oracle-audio diagnostic on the same run: a copy of its data, a stage 2 on the copy, both scored.
    from benchmarks import audio_oracle

    assert audio_oracle.main(["--run", str(tmp_path), "--recipe=smoke", "--batches=2", "--times=0.5"]) == 0
    assert tw.finished_step(tmp_path / "oracle_stage2") == 2
    report = json.loads((tmp_path / "oracle_stage2" / "audio_oracle.json").read_text())
    for row in ("stage2 (log-mel audio)", "stage2 on the lip oracle"):
        assert report[row]["windows"] > 0 and np.isfinite(report[row]["t=0.5"]["audio_gain"])


def test_learning_proof_reports_met_and_missed_targets_with_the_gap(tmp_path):
    from benchmarks import learning_proof as lp

    row = dict(sync=0.5, pose_err_px=2.0, psnr=20.0, ssim=0.5, motion_px=1.0, clips=1)
    lines = lp.check_targets(
        {"1 audio-driven": row, "2 pose-driven": row, "ground truth": dict(row, sync=0.95)}
    )
    text = "\n".join(lines)
    assert "1 audio-driven: sync = 0.500, target >= 0.6: **missed**, missed by 0.1" in text
    assert "2 pose-driven: pose_err_px = 2.000, target <= 3.0: **met**" in text
    assert "psnr = 20.000, target >= 25.0: **missed**, missed by 5" in text
    assert "no-audio ablation, audio-driven: sync not measured" in text
    ablation = dict(row, sync=0.0)
    vacuous = "\n".join(
        lp.check_targets({"1 audio-driven": row, "4 no-audio ablation, audio-driven": ablation})
    )
    assert "sync = 0.000, target <= 0.2: **met** (half of a pair: the audio-driven row, 0.500" in vacuous
    unsynced = {"1 audio-driven": dict(row, sync=0.15), "4 no-audio ablation, audio-driven": ablation}
    assert "sync = 0.000, target <= 0.2: **met** (vacuous" in "\n".join(lp.check_targets(unsynced))
    synced = {"1 audio-driven": dict(row, sync=0.7), "4 no-audio ablation, audio-driven": ablation}
    assert "**met**\n" in "\n".join(lp.check_targets(synced)) + "\n"
    vanished = "\n".join(lp.check_targets({"2 pose-driven": dict(row, hands_found=0.25)}))
    assert "pose_err_px = 2.000, target <= 3.0: **missed**: hands seen in only 25% of the frames" in vanished
    seen = "\n".join(lp.check_targets({"2 pose-driven": dict(row, hands_found=0.95)}))
    assert "pose_err_px = 2.000, target <= 3.0: **met**" in seen
    assert "vacuous" not in "\n".join(lp.check_targets(synced))
    assert lp.chance_lines(synced) == []  # no row carries its chance level: no section
    chance = lp.chance_lines({"1 audio-driven": dict(row, sync_swapped=0.21), "2 pose-driven": row})
    assert chance[0] == "## Chance level of sync" and chance[-1] == ""
    assert (
        "- 1 audio-driven: sync 0.500 against its own audio, 0.210 against another held-out clip's"
        in chance[1]
    )
    lp.bar_plot({"a": row, "b": dict(row, sync=float("nan"))}, tmp_path / "p.png")
    from PIL import Image

    assert Image.open(tmp_path / "p.png").size[0] == 760


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_vae_loss_overrides_merge_into_the_shared_weights(recipe):
    from launch.train_vae import default_config

    loss = dict(get_config(recipe).vae.loss)
    assert set(loss) <= set(default_config().loss)  # each becomes a --config.loss.KEY flag of train_vae
    own = dict(RECIPES[recipe]["vae"].get("loss", {}))
    assert loss == {**VAE_LOSS, **own} and {"motion_l1", "region_l1", "temporal_l1"} <= set(loss)
    assert dict(RECIPES["proof"]["vae"]["loss"])  # get_config leaves the recipe table as it was
    proof, quick = (dict(get_config(r).vae.loss)["temporal_l1"] for r in ("proof", "quick"))
    assert proof > quick  # the proof's own weight (session 21)


def test_recipe_lines_name_steps_reused_from_an_earlier_invocation(tmp_path):
    import json

    from benchmarks import learning_proof as lp

    timings = {"world": 0.0, "vae": 0.1, "stage1": 150.2}
    (tmp_path / "metrics.json").write_text(json.dumps({"timings_s": timings}))
    lines = lp.recipe_lines(get_config("smoke"), tmp_path)
    assert any("wall time" in line and "stage1 150.2" in line and "vae" not in line for line in lines)
    assert any("reused" in line and "world, vae" in line for line in lines)


def test_recipe_lines_name_the_vae_loss_weights_and_the_sweep_steps(tmp_path):
    from benchmarks import learning_proof as lp

    cfg = get_config("proof")
    vae_line, dit_line = lp.recipe_lines(cfg, tmp_path)[:2]
    assert f"loss.motion_l1 {cfg.vae.loss.motion_l1}" in vae_line
    sweep = dict(cfg.ablations.pose_02.overrides)["total_steps"]
    assert f"pose_02 (stages (3,), {sweep} steps)" in dit_line and "no_audio (stages (2, 3))" in dit_line
    rate = dict(cfg.stages.stage3)["optimizer.lr"]
    assert f"stage3 {rate})" in dit_line  # each stage's own learning rate
    sampling_line = lp.recipe_lines(cfg, tmp_path)[2]
    assert f"pose CFG {cfg.sampling.cfg_pose} in pose-driven rows" in sampling_line
    for key, value in cfg.train:  # the training flags that shape what is learned
        if key.startswith(("flow.", "optimizer.lr_multipliers")):
            assert f"{key} {value}" in dit_line


def test_learning_proof_scores_row_1_for_the_cfg_schedule_it_already_sampled(tmp_path, monkeypatch):
    from benchmarks import learning_proof as lp

    cfg = get_config("smoke")
    drawn = []

    def fake_sample(cfg, root, ckpt, vae, inputs, mode, folder="", sampling=None):
        drawn.append((folder or mode, (sampling or {}).get("cfg_schedule", cfg.sampling.cfg_schedule)))
        return root / "samples" / (folder or mode)

    def fake_score(world, folder, fps):
        return {"sync": float(len(folder.name)), "psnr": 25.0}

    monkeypatch.setattr(tw, "run_recipe", lambda cfg, root: None)
    monkeypatch.setattr(tw, "eval_inputs", lambda world, root, n: [{"clip_id": "c0"}])
    monkeypatch.setattr(tw, "score_truth", lambda world, ids, fps: {"sync": 1.0})
    monkeypatch.setattr(tw, "step_sample", fake_sample)
    monkeypatch.setattr(tw, "step_stage", lambda cfg, root, stage, data, vae, prev, name, extra: root / name)
    monkeypatch.setattr(tw, "score", fake_score)
    monkeypatch.setattr(lp, "score_vae_reconstruction", lambda world, vae, inputs, fps: {"sync": 0.5})
    rows, _ = lp.run_proof(cfg, tmp_path)
    schedules = [s for folder, s in drawn if folder == "audio" or folder.startswith("cfg_")]
    assert sorted(schedules) == ["constant", "linear"]  # each schedule drawn once
    same = {"constant": "constant", "linear": "annealed"}[cfg.sampling.cfg_schedule]
    other = {"constant": "annealed", "annealed": "constant"}[same]
    assert rows[f"6 CFG {same}, audio-driven"] == rows["1 audio-driven"]
    assert rows[f"6 CFG {other}, audio-driven"] != rows["1 audio-driven"]
