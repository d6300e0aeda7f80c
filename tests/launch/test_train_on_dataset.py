"""Acceptance of the data path (docs/design.md, Data source API): a folder of raw clips is built into a
TFDS dataset by `python -m data_pipeline.build` and `python -m launch.train` trains on it, stages 1 to 3
(OmniHuman-1 section 3.3: text + reference, then audio, then pose).

Two dataset kinds: latents stored (built with `--vae`) and frames only (built without; the trainer
encodes frames online with `--config.vae.path`). Stage 1 trains here on latents and stage 3 on frames;
stage 2 trains on latents in tests/launch/test_resume_with_data.py, which reuses these datasets (one
train process per stage keeps CI short: each start traces and compiles the model).

Shapes follow the tiny preset (configs/presets.py): 9 frames at 64x64 -> latents (3, 8, 8, 4); log-mel
audio with 2 groups x 16 bins; a random T5 encoder of width 32; pose heatmaps at 2x the latent size.

Builds and training runs are subprocesses, as a user runs them, sharing one persistent JAX compilation cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.data_pipeline.test_media import truncate, write_mp4, write_wav

ROOT = Path(__file__).resolve().parents[2]
SIDE = 64  # pixels: one 64x64 bucket at pixel_budget 4096, 8x8 latents
CLIP_FRAMES = 9  # 1 + 4 * 2 video frames -> 3 latent frames (tiny preset)
SOURCE_FRAMES = 18  # two 9-frame clips per source video
SCORES_ALL = {"lipsync": 8.0, "pose_visibility": 0.95, "aesthetics": 5.0, "motion_amplitude": 0.4}
SCORES_LOW = {"lipsync": 2.0, "pose_visibility": 0.3}  # text + reference only


def subprocess_env(cache_dir: Path) -> dict[str, str]:
    """One CPU device, fast test compiles, and a persistent compilation cache shared by every run."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        HF_HUB_OFFLINE="1",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(ROOT),
    )
    return env


def run_module(module: str, args: list[str], env: dict[str, str], timeout: int = 240) -> str:
    """`python -m module args`; fails the test with the output when it exits non-zero."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f"python -m {module} {' '.join(args)} exited {proc.returncode}:\n{out[-4000:]}"
    )
    return out


def write_raw_clips(root: Path, num_videos: int = 3) -> Path:
    """A manifest over `num_videos` good 64x64 videos plus one corrupt mp4.

    Video 0 carries its own 48 kHz AAC track; the others have a separate 44.1 kHz wav. Every video has
    keypoints; the scores make videos 0 and 1 audio- and pose-eligible and video 2 neither.
    """
    clips = root / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(num_videos):
        video = clips / f"v{i}.mp4"
        write_mp4(
            video, num_frames=SOURCE_FRAMES, height=SIDE, width=SIDE, audio_rate=48000 if i == 0 else None
        )
        entry = dict(
            clip_id=f"v{i}",
            video=f"clips/v{i}.mp4",
            caption=["a man talks", "a woman sings a song", "person with red hair"][i % 3],
            scores=SCORES_ALL if i < 2 else SCORES_LOW,
        )
        if i > 0:
            write_wav(clips / f"v{i}.wav", seconds=SOURCE_FRAMES / 25, rate=44100, tone_hz=220.0 * (i + 1))
            entry["audio"] = f"clips/v{i}.wav"
        rng = np.random.default_rng(i)
        kp = np.empty((SOURCE_FRAMES, 133, 3), np.float32)  # (F_src, 133, 3): pixels + confidence
        kp[..., :2] = rng.uniform(8, SIDE - 8, (1, 133, 2)) + np.cumsum(
            rng.normal(0, 0.5, (SOURCE_FRAMES, 133, 2)), 0
        )
        kp[..., 2] = 0.9
        np.save(clips / f"v{i}.kp.npy", kp)
        entry["keypoints"] = f"clips/v{i}.kp.npy"
        lines.append(entry)
    truncate(
        write_mp4(clips / "whole.mp4", num_frames=SOURCE_FRAMES, height=SIDE, width=SIDE),
        clips / "corrupt.mp4",
    )
    (clips / "whole.mp4").unlink()
    lines.append(dict(clip_id="corrupt", video="clips/corrupt.mp4", caption="a man talks", scores=SCORES_ALL))
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return manifest


def save_text_encoder(path: Path, d_model: int = 32) -> Path:
    """A random T5 encoder of width `d_model` with a word-level tokenizer over the captions above."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    words = ["a man talks", "a woman sings a song", "person with red hair"]
    tok.train_from_iterator(words, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(path)
    config = T5Config(
        vocab_size=fast.vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    T5EncoderModel(config).save_pretrained(path)
    return path


def save_tiny_vae(path: Path) -> Path:
    """A random diffusers-format VAE: 4 latent channels, 8x spatial and 4x temporal compression."""
    import jax

    from omnihuman_jax.interop.diffusers_vae import save_vae
    from omnihuman_jax.models.vae import VAEConfig, init_vae

    cfg = VAEConfig(
        latent_channels=4,
        block_out_channels=(8, 8, 8),
        layers_per_block=1,
        norm_num_groups=2,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
    )
    save_vae(path, cfg, init_vae(cfg, jax.random.PRNGKey(0)))
    return path


def build_args(manifest: Path, out: Path, text_encoder: Path, vae: Path | None) -> list[str]:
    args = ["--manifest", str(manifest), "--out", str(out), "--pixel_budget", str(SIDE * SIDE),
            "--clip_frames", str(CLIP_FRAMES), "--audio_frontend", "logmel", "--mel_bins", "16",
            "--mel_groups", "2", "--text_encoder", str(text_encoder), "--text_max_len", "8",
            "--num_ref_candidates", "2", "--no_progress"]  # fmt: skip
    return args + (["--vae", str(vae)] if vae else [])


def train_args(stage: int, workdir: Path, data_dir: Path, steps: int, *extra: str) -> list[str]:
    return [
        f"--config=configs/stage{stage}.py:tiny",
        f"--workdir={workdir}",
        f"--config.data.dir={data_dir}",
        f"--config.total_steps={steps}",
        "--config.metrics.peak_flops_per_device=1e12",  # skip the start-up matmul measurement
        "--config.metrics.tensorboard=False",
        "--config.checkpoint.async_save=False",
        *extra,
    ]


def read_metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line]


def shared_datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Raw clips, encoders, and the two datasets the build CLI makes from them, built once per session.

    Other test modules (tests/launch/test_resume_with_data.py) reuse them through this function.
    """
    base = tmp_path_factory.getbasetemp()
    tmp = base / "e2e_data"
    env = subprocess_env(base / "jax_cache")
    paths: dict[str, Any] = dict(
        tmp=tmp, env=env, vae=tmp / "vae", latents=tmp / "ds_latents", frames=tmp / "ds_frames"
    )
    done = tmp / "BUILT"
    if done.exists():
        return paths
    manifest = write_raw_clips(tmp / "raw")
    text_encoder = save_text_encoder(tmp / "t5")
    save_tiny_vae(paths["vae"])
    # The CLI as a user runs it (VAE latents), and its main() in this process (frames: no VAE to load).
    run_module("data_pipeline.build", build_args(manifest, paths["latents"], text_encoder, paths["vae"]), env)
    from data_pipeline import build

    assert build.main(build_args(manifest, paths["frames"], text_encoder, None)) == 0
    done.write_text("ok")
    return paths


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Any]:
    return shared_datasets(tmp_path_factory)


@pytest.mark.parametrize("kind", ["latents", "frames"])
def test_build_cli_writes_every_good_clip_and_counts_the_corrupt_one(built, kind):
    from data_pipeline import records, tfds_builder

    report = json.loads((built[kind] / "featurize_report.json").read_text())
    assert report["clips_written"] == 6, report  # 3 videos x 2 clips of 9 frames
    assert sum(report["skipped_entries"].values()) == 1, report["skipped_entries"]
    source = tfds_builder.open_data_source(built[kind])
    recs = [source[i] for i in range(len(source))]
    for rec in recs:
        records.validate_record(rec)
        assert rec["num_frames"] == CLIP_FRAMES and (rec["height"], rec["width"]) == (SIDE, SIDE)
        assert rec["audio_features"].shape == (CLIP_FRAMES, 2, 16)
        assert rec["text_embedding"].shape[1] == 32
        if kind == "latents":
            assert rec["latents"].shape == (3, 8, 8, 4) and rec["frames"].shape[0] == 0
        else:
            assert rec["frames"].shape == (CLIP_FRAMES, SIDE, SIDE, 3) and rec["latents"].size == 0
    assert (
        sum(bool(r["audio_eligible"]) for r in recs) == 4 and sum(bool(r["pose_eligible"]) for r in recs) == 4
    )


def test_train_stage1_on_a_built_dataset_with_stored_latents(built):
    workdir = built["tmp"] / "run_latents_s1"
    out = run_module("launch.train", train_args(1, workdir, built["latents"], 2), built["env"])
    assert "finished at step 2" in out
    metrics = read_metrics(workdir)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(np.isfinite(m["loss"]) and m["loss"] > 0 for m in metrics), metrics


def test_train_stage3_on_a_frames_only_dataset_encodes_frames_with_the_configured_vae(built):
    workdir = built["tmp"] / "run_frames_s3"
    args = train_args(3, workdir, built["frames"], 2, f"--config.vae.path={built['vae']}")
    out = run_module("launch.train", args, built["env"])
    assert "finished at step 2" in out
    metrics = read_metrics(workdir)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(np.isfinite(m["loss"]) and m["loss"] > 0 for m in metrics), metrics


def _frames_batch(built, reference_kept: list[bool]) -> tuple[Any, dict[str, np.ndarray]]:
    from configs.base import get_base_config
    from data_pipeline import grain_pipeline

    cfg = get_base_config(3, "tiny")
    cfg.data.dir, cfg.batch_size = str(built["frames"]), len(reference_kept)
    it = grain_pipeline.make_train_iterator(cfg)
    batch = next(it)
    it.close()
    batch["condition_mask"][:, 1] = reference_kept
    return cfg, batch


def test_online_encoding_matches_the_vae_and_zeroes_dropped_references(built):
    from omnihuman_jax.interop.diffusers_vae import load_vae
    from omnihuman_jax.latent_encoding import make_batch_preprocessor
    from omnihuman_jax.models.vae import encode_video

    cfg, batch = _frames_batch(built, [True, False])
    cfg.vae.path = str(built["vae"])
    out = make_batch_preprocessor(cfg)(dict(batch))
    assert "frames" not in out and "ref_frame" not in out
    assert out["latents"].shape == (2, 3, 8, 8, 4) and out["ref_latents"].shape == (2, 1, 8, 8, 4)
    vae_cfg, params = load_vae(built["vae"])
    want = np.asarray(encode_video(vae_cfg, params, batch["frames"].astype(np.float32) / 127.5 - 1.0))
    np.testing.assert_allclose(out["latents"], want, rtol=1e-5, atol=1e-5)
    ref = np.asarray(encode_video(vae_cfg, params, batch["ref_frame"][:1].astype(np.float32) / 127.5 - 1.0))
    np.testing.assert_allclose(out["ref_latents"][:1], ref, rtol=1e-5, atol=1e-5)
    assert np.abs(out["ref_latents"][0]).max() > 0 and not out["ref_latents"][1].any()


def test_frames_only_dataset_without_a_vae_path_names_the_missing_flag(built):
    from omnihuman_jax.latent_encoding import make_batch_preprocessor

    cfg, batch = _frames_batch(built, [True, True])
    with pytest.raises(ValueError, match="config.vae.path"):
        make_batch_preprocessor(cfg)(batch)


def test_vae_ratio_that_differs_from_the_vae_folder_is_a_config_error_naming_both(built):
    from configs.base import get_base_config
    from omnihuman_jax.config_checks import ConfigError, validate_config
    from omnihuman_jax.latent_encoding import make_batch_preprocessor

    cfg = get_base_config(3, "tiny")
    cfg.vae.path = str(built["vae"])
    validate_config(cfg)  # the test VAE compresses 8x, the default
    cfg.vae.spatial_compression_ratio = 4
    with pytest.raises(ConfigError, match=r"vae.spatial_compression_ratio.*compresses 8x"):
        validate_config(cfg)
    cfg.vae.spatial_compression_ratio = 3
    with pytest.raises(ConfigError, match="not a power of 2"):
        validate_config(cfg)
    cfg, batch = _frames_batch(built, [True, True])
    cfg.vae.path, cfg.vae.spatial_compression_ratio = str(built["vae"]), 4
    with pytest.raises(ValueError, match="compresses 8x spatially"):
        make_batch_preprocessor(cfg)(batch)


def test_frames_only_pose_heatmaps_follow_the_configured_vae_ratio(built):
    from configs.base import get_base_config
    from data_pipeline import grain_pipeline

    sizes = {}
    for ratio in (8, 4):
        cfg = get_base_config(3, "tiny")
        cfg.data.dir, cfg.batch_size, cfg.vae.spatial_compression_ratio = str(built["frames"]), 1, ratio
        it = grain_pipeline.make_train_iterator(cfg)
        sizes[ratio] = next(it)["pose_heatmaps"].shape[2:4]
        it.close()
    s = cfg.model.pose_heatmap_scale
    assert sizes[8] == (SIDE // 8 * s, SIDE // 8 * s) and sizes[4] == (SIDE // 4 * s, SIDE // 4 * s)
