"""The toy-world generator: determinism, manifest schema, measurable ground truth, filter rates, CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.toyworld import generate, identity, measure, render, speech

SECONDS = 1.2
FPS = 25.0
DESIGN_KEYS = {"clip_id", "video", "audio", "keypoints", "caption", "scores", "identity", "split"}
SCORE_KEYS = {"lipsync", "pose_visibility", "aesthetics", "motion_amplitude"}


def _generate(out: Path, seed: int = 7, **kw) -> list[dict]:
    kw = {"num_identities": 2, "clips_per_identity": 1, "seconds": SECONDS, **kw}
    return generate.generate_dataset(out, seed=seed, **kw)


def _read_clip(root: Path, entry: dict):
    frames = render.read_mp4(root / entry["video"])
    wav, sr = render.read_wav(root / entry["audio"])
    keypoints = np.load(root / entry["keypoints"])
    truth = np.load(root / "clips" / f"{entry['clip_id']}.truth.npz")
    return frames, wav, sr, keypoints, truth


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory) -> tuple[Path, list[dict]]:
    """3 identities x 2 clips whose audio and pose are all clean (pass both filters)."""
    out = tmp_path_factory.mktemp("clean")
    entries = _generate(
        out,
        num_identities=3,
        clips_per_identity=2,
        audio_clean_rate=1.0,
        pose_clean_rate=1.0,
        camera_motion_rate=0.5,
    )
    return out, entries


def test_generation_is_deterministic_for_a_seed(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _generate(a)
    _generate(b)
    assert (a / "manifest.jsonl").read_text() == (b / "manifest.jsonl").read_text()
    for entry in map(json.loads, (a / "manifest.jsonl").read_text().splitlines()):
        fa, wa, _, ka, ta = _read_clip(a, entry)
        fb, wb, _, kb, tb = _read_clip(b, entry)
        np.testing.assert_array_equal(fa, fb)  # decoded frames
        np.testing.assert_array_equal(wa, wb)
        assert ka.tobytes() == kb.tobytes()
        for key in ta.files:
            np.testing.assert_array_equal(ta[key], tb[key], err_msg=key)


def test_different_seeds_give_different_clips(tmp_path):
    ea = _generate(tmp_path / "a", seed=1, num_identities=1)
    eb = _generate(tmp_path / "b", seed=2, num_identities=1)
    ka = np.load(tmp_path / "a" / ea[0]["keypoints"])
    kb = np.load(tmp_path / "b" / eb[0]["keypoints"])
    assert not np.array_equal(ka, kb)


def test_manifest_lines_follow_the_design_schema_and_name_real_files(clean_dataset):
    root, entries = clean_dataset
    lines = (root / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == entries
    num_frames = int(round(SECONDS * FPS))
    for entry in entries:
        assert set(entry) == DESIGN_KEYS
        assert set(entry["scores"]) == SCORE_KEYS
        assert all(isinstance(v, float) and np.isfinite(v) for v in entry["scores"].values())
        for key in ("video", "audio", "keypoints"):
            assert not Path(entry[key]).is_absolute() and (root / entry[key]).is_file()
        frames, wav, sr, keypoints, _ = _read_clip(root, entry)
        assert frames.shape == (num_frames, 64, 64, 3)
        assert keypoints.shape == (num_frames, 133, 3) and keypoints.dtype == np.float32
        assert sr == speech.SAMPLE_RATE and wav.shape == (num_frames * sr // int(FPS),)
        assert entry["clip_id"].startswith(entry["identity"]) and entry["caption"]
    settings = json.loads((root / "toyworld.json").read_text())
    assert settings["lipsync_threshold"] == generate.LIPSYNC_THRESHOLD
    assert settings["pose_visibility_threshold"] == generate.POSE_VISIBILITY_THRESHOLD


def test_eval_identities_are_held_out_of_training(clean_dataset):
    _, entries = clean_dataset
    by_split = {s: {e["identity"] for e in entries if e["split"] == s} for s in ("train", "eval")}
    assert by_split["eval"] == {"id0002"}  # the last --eval_identities (default 1) identities
    assert by_split["train"] == {"id0000", "id0001"}


def test_ground_truth_clips_read_from_files_sync_and_match_their_keypoints(clean_dataset):
    root, entries = clean_dataset
    for entry in entries:
        frames, wav, sr, keypoints, truth = _read_clip(root, entry)
        sync = measure.sync_score(frames, wav, sr, FPS)
        pose_error = measure.pose_error_px(frames, keypoints)
        assert sync >= 0.9, f"{entry['clip_id']}: sync {sync:.3f} < 0.9"
        assert pose_error <= 1.0, f"{entry['clip_id']}: pose error {pose_error:.3f} px > 1"
        opening_corr = measure.pearson(measure.mouth_opening(frames), truth["mouth_opening"])
        assert opening_corr >= 0.95, f"{entry['clip_id']}: measured vs true mouth corr {opening_corr:.3f}"
        assert entry["scores"]["lipsync"] >= generate.LIPSYNC_THRESHOLD
        assert entry["scores"]["pose_visibility"] >= generate.POSE_VISIBILITY_THRESHOLD


def test_keypoint_hand_centres_are_the_drawn_hand_centres(clean_dataset):
    root, entries = clean_dataset
    for entry in entries:
        _, _, _, keypoints, truth = _read_clip(root, entry)
        centres = measure.hand_centres_from_keypoints(keypoints)
        seen = np.isfinite(centres)
        assert seen.mean() > 0.8
        np.testing.assert_allclose(centres[seen], truth["hand_centres"][seen], atol=1e-3)


def test_static_region_of_the_decoded_video_keeps_the_reference_appearance(clean_dataset):
    root, entries = clean_dataset
    for entry in entries:
        frames, _, _, _, truth = _read_clip(root, entry)
        if truth["static_mask"].sum() < 100:  # a moving camera leaves little static
            continue
        psnr, ssim = measure.static_region_psnr_ssim(frames, truth["reference_frame"], truth["static_mask"])
        assert psnr > 30.0 and ssim > 0.9, (entry["clip_id"], psnr, ssim)


def test_corrupted_audio_is_annotated_low_and_measures_out_of_sync(tmp_path):
    entries = _generate(tmp_path, num_identities=2, clips_per_identity=2, audio_clean_rate=0.0)
    kinds = set()
    for entry in entries:
        frames, wav, sr, _, truth = _read_clip(tmp_path, entry)
        kinds.add(str(truth["audio_corruption"]))
        assert entry["scores"]["lipsync"] < generate.LIPSYNC_THRESHOLD
        sync = measure.sync_score(frames, wav, sr, FPS)
        assert sync < 0.5, f"{entry['clip_id']} ({truth['audio_corruption']}): sync {sync:.3f}"
        driving = speech.pcm16_to_float(truth["driving_audio"])  # the audio the mouth really follows
        assert measure.sync_score(frames, driving, sr, FPS) >= 0.9
    assert kinds <= {"shift", "swap"}


def test_about_13_percent_of_score_draws_pass_both_filters_as_the_knobs_say():
    rng = np.random.default_rng(2024)
    both, n = 0, 200
    for _ in range(n):
        person = identity.sample_identity(rng, "p")
        cond = generate.sample_conditions(rng)
        truth = generate.simulate_clip(rng, person, cond, seconds=0.8)
        audio_ok, pose_ok = generate.passes_filters(truth.scores)
        assert audio_ok == (cond.audio_corruption == "none"), (cond, truth.scores)
        assert pose_ok == (cond.hands_dropped_fraction < 0.3), (cond, truth.scores)
        both += audio_ok and pose_ok
    assert 0.08 <= both / n <= 0.19, f"{both}/{n} pass both filters; expected about 13%"


def test_mouth_follows_the_audio_with_the_fixed_lag_and_hands_move_more_in_speech_than_pauses():
    rng = np.random.default_rng(11)
    speech_speed, pause_speed = [], []
    for _ in range(12):
        person = identity.sample_identity(rng, "p")
        clean = generate.ClipConditions(
            "none", camera_motion=False, hands_dropped_fraction=0.0, aesthetics=5.0
        )
        truth = generate.simulate_clip(rng, person, clean, seconds=2.0)
        env = measure.audio_envelope(speech.pcm16_to_float(truth.audio_pcm), speech.SAMPLE_RATE, FPS, 50)
        assert measure.lagged_correlation(truth.motion.mouth_opening, env)[1] == generate.MOUTH_LAG_FRAMES
        speed = np.linalg.norm(np.diff(truth.motion.hands, axis=0), axis=-1).mean(axis=-1)  # (F - 1,)
        level = 0.5 * (env[1:] + env[:-1]) / env.max()  # (F - 1,) loudness over each step
        speech_speed += list(speed[level > 0.4])
        pause_speed += list(speed[level < 0.1])
    ratio = np.mean(speech_speed) / np.mean(pause_speed)
    assert ratio > 1.15, f"hands move only {ratio:.2f}x faster in speech than in pauses"


def test_palette_colours_and_their_mixes_stay_far_from_reserved_colours():
    colours = [c for palette in identity.ALL_PALETTES for c in palette.values()]
    colours += [identity.EYE_COLOUR, identity.LIP_COLOUR]
    colours += [tuple(int(render.SLEEVE_SHADE * v) for v in c) for c in identity.CLOTHING_COLOURS.values()]
    reserved = np.array(measure.RESERVED_COLOURS, float)
    worst = min(
        np.linalg.norm(reserved - 0.5 * (np.array(a, float) + np.array(b, float)), axis=1).min()
        for a, b in itertools.combinations_with_replacement(colours, 2)
    )
    assert worst > measure.COLOUR_FAR + 20, f"a palette mix comes within {worst:.1f} of a reserved colour"
    for a, b in itertools.combinations(measure.RESERVED_COLOURS, 2):
        assert np.linalg.norm(np.subtract(a, b)) > measure.COLOUR_FAR + 20  # one never counts as another


def test_caption_names_skin_hair_clothing_and_background():
    person = identity.sample_identity(np.random.default_rng(3), "p")
    text = identity.caption(person, camera_motion=True)
    for word in (person.skin[0], person.clothing[0], person.background[0]):
        assert word in text
    assert (person.hair[0] in text) or person.hair_style == "bald"
    assert "camera moves" in text and "camera" not in identity.caption(person, camera_motion=False)


def test_speech_has_syllables_and_pauses_and_is_deterministic():
    a = speech.synthesize_speech(np.random.default_rng(5), 2.0, 140.0)
    b = speech.synthesize_speech(np.random.default_rng(5), 2.0, 140.0)
    np.testing.assert_array_equal(a.wav, b.wav)
    env = measure.audio_envelope(a.wav, a.sample_rate, FPS, 50)
    quiet, loud = np.mean(env < 0.1 * env.max()), np.mean(env > 0.3 * env.max())
    assert quiet > 0.05 and loud > 0.3, (quiet, loud)
    spectrum = np.abs(np.fft.rfft(a.wav)) ** 2
    freqs = np.fft.rfftfreq(a.wav.shape[0], 1 / a.sample_rate)
    assert spectrum[freqs < 4000].sum() > 0.9 * spectrum.sum()  # voiced energy sits in the speech band


def test_pcm16_round_trip_through_a_wav_file_is_exact(tmp_path):
    pcm = speech.to_pcm16(np.array([0.0, 0.5, -1.0, 0.999999, -0.25], np.float32))
    render.write_wav(tmp_path / "x.wav", pcm, 16000)
    wav, sr = render.read_wav(tmp_path / "x.wav")
    np.testing.assert_array_equal(wav, speech.pcm16_to_float(pcm))


def test_cli_help_explains_every_flag(capsys):
    parser = generate.build_parser()
    for action in parser._actions:
        assert action.help, f"flag {action.option_strings} has no help"
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    flags = "--out --num_identities --clips_per_identity --seed --height --width --fps --seconds"
    flags += " --eval_identities --audio_clean_rate --pose_clean_rate --camera_motion_rate --crf --overwrite"
    for flag in flags.split():
        assert flag in text


def test_cli_writes_a_dataset_and_refuses_to_overwrite_it(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--num_identities", "1", "--clips_per_identity", "1", "--seed", "3",
            "--seconds", "0.8", "--eval_identities", "0"]  # fmt: skip
    assert generate.main(args) == 0
    before = (tmp_path / "manifest.jsonl").read_text()
    assert json.loads(before)["split"] == "train"
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate.main(args[:-1] + ["1"])
    assert (tmp_path / "manifest.jsonl").read_text() == before


def test_generator_rejects_bad_arguments_with_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="even"):
        _generate(tmp_path / "odd", height=63)
    with pytest.raises(ValueError, match="eval_identities"):
        _generate(tmp_path / "ev", eval_identities=3)
    with pytest.raises(ValueError, match="audio_clean_rate"):
        _generate(tmp_path / "rate", audio_clean_rate=1.5)
