"""`python -m launch.sample` end to end on a tiny random checkpoint and VAE, and its bad-input errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
from PIL import Image

from configs import stage2
from launch import sample as cli
from launch.sample_inputs import load_image
from omnihuman_jax.batch import sample_model_inputs, zeros_batch
from omnihuman_jax.checkpointing import Checkpointer
from omnihuman_jax.interop.diffusers_vae import save_vae
from omnihuman_jax.models.dit import DiTConfig, OmniHumanDiT
from omnihuman_jax.models.vae import VAEConfig, init_vae

REPO = Path(__file__).resolve().parents[2]
FPS = 10.0
AUDIO_SECONDS = 3.3


def _tiny_config():
    return stage2.get_config("tiny")


def _save_checkpoint(workdir: Path, config, params) -> None:
    ckpt = Checkpointer(str(workdir), async_save=False)
    state = {"params": params, "ema_params": params, "step": np.int32(1)}
    ckpt.save(1, state, {}, {"config": json.loads(config.to_json_best_effort()), "step": 1})
    ckpt.close()


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sample")
    config = _tiny_config()
    model = OmniHumanDiT(DiTConfig.from_config(config.model))
    inputs = sample_model_inputs(zeros_batch(config, 1))
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), inputs, jnp.zeros((1,)))["params"])
    params = jax.tree.map(np.asarray, params)
    _save_checkpoint(root / "run", config, params)

    # a checkpoint whose audio update is confined to the mouth region (model.audio_gate)
    gated_cfg = _tiny_config()
    gated_cfg.model.audio_gate = True
    _save_checkpoint(root / "gated_run", gated_cfg, params)  # the gate adds no params

    # a checkpoint whose params do not fit its config: one kernel with the wrong shape
    bad = jax.tree.map(lambda x: x, params)
    bad["proj_out"]["kernel"] = np.zeros((3, 3), np.float32)
    _save_checkpoint(root / "bad_run", config, bad)

    vae_cfg = VAEConfig(
        latent_channels=4, block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=2
    )
    save_vae(str(root / "vae"), vae_cfg, init_vae(vae_cfg, jax.random.key(1)))
    wrong = VAEConfig(latent_channels=8, block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=2)
    save_vae(str(root / "vae8"), wrong, init_vae(wrong, jax.random.key(1)))
    ratio4 = dataclasses.replace(vae_cfg, spatial_compression_ratio=4)  # the run was trained with 8x
    save_vae(str(root / "vae_4x"), ratio4, init_vae(ratio4, jax.random.key(1)))

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "square.png")
    Image.fromarray(rng.integers(0, 255, (500, 300, 3), dtype=np.uint8)).save(root / "tall.jpg")
    t = np.arange(int(AUDIO_SECONDS * 16000)) / 16000
    soundfile.write(root / "a.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    soundfile.write(root / "empty.wav", np.zeros(0, np.float32), 16000)
    (root / "notaudio.wav").write_bytes(b"this is not audio" * 10)
    (root / "notimage.png").write_bytes(b"not a png")
    np.save(root / "pose_short.npy", rng.random((5, 133, 3)).astype(np.float32) * 60)
    pose = np.concatenate([rng.random((33, 133, 2)) * 60, np.ones((33, 133, 1))], axis=-1)
    np.save(root / "pose33.npy", pose.astype(np.float32))  # 3.3 s at 10 fps, every point confident
    return {p.name: p for p in root.iterdir()}


def _args(assets, out: Path, **over) -> list[str]:
    args = {
        "--checkpoint": assets["run"],
        "--vae": assets["vae"],
        "--image": assets["square.png"],
        "--audio": assets["a.wav"],
        "--out": out,
        "--steps": 2,
        "--fps": FPS,
        "--segment_frames": 17,
        "--audio_frontend": "logmel",
        **over,
    }
    return [str(x) for kv in args.items() for x in kv]


def _probe(path: Path) -> tuple[int, int, int, list[str]]:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        layouts = [s.codec_context.layout.name for s in c.streams.audio]
        return frames, v.codec_context.width, v.codec_context.height, layouts


def test_cli_writes_an_mp4_with_audio_at_the_audio_length_and_the_image_bucket(assets, tmp_path):
    out = tmp_path / "video.mp4"
    # One CPU device: the 8-device branch sharding is covered by tests/test_guidance.py, and the
    # simulated 8-device mesh makes this run 4x slower.
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS=flags)
    cmd = [sys.executable, "-m", "launch.sample", *_args(assets, out, **{"--image": assets["tall.jpg"]})]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames, width, height, layouts = _probe(out)
    assert abs(frames - round(AUDIO_SECONDS * FPS)) <= 1
    assert layouts == ["mono"]  # the mono input stays mono
    image, _ = load_image(assets["tall.jpg"], 64 * 64)
    assert (height, width) == image.shape[:2] and height > width  # 300x500 keeps its portrait bucket
    assert cli.contact_sheet_path(out).is_file()


def test_audio_gated_checkpoint_samples_audio_driven_with_the_mouth_region_of_pose(assets, tmp_path):
    out = tmp_path / "gated.mp4"
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS=flags)
    over = {"--checkpoint": assets["gated_run"], "--pose": assets["pose33.npy"], "--mode": "audio"}
    cmd = [sys.executable, "-m", "launch.sample", *_args(assets, out, **over)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert abs(_probe(out)[0] - round(AUDIO_SECONDS * FPS)) <= 1


@pytest.mark.parametrize(
    "over,message",
    [
        ({"--image": "notimage.png"}, "cannot read it as an image"),
        ({"--image": "missing.png"}, "does not exist"),
        ({"--audio": "empty.wav"}, "--audio: empty.wav: audio has no samples"),
        ({"--audio": "notaudio.wav"}, "--audio: notaudio.wav: cannot open audio"),
        ({"--pose": "pose_short.npy"}, "has 5 frames but the audio gives 33"),
        ({"--checkpoint": "bad_run"}, "do not match its model config"),
        ({"--checkpoint": "nowhere"}, "does not exist"),
        ({"--vae": "vae8"}, "latent_channels=8"),
        ({"--vae": "vae_4x"}, "4x spatial compression; the checkpoint needs .* and 8x"),
        ({"--mel_bins": "80"}, "trained on"),
        ({"--segment_frames": "10"}, "1 \\+ 4k"),
        ({"--cfg_pose": "2"}, "--cfg_pose 2.0 applies to --mode=pose only"),
        ({"--checkpoint": "gated_run"}, "model.audio_gate\\): pass --pose"),
    ],
)
def test_bad_inputs_fail_before_compute_with_a_clear_error(
    assets, tmp_path, capsys, monkeypatch, over, message
):
    def no_compute(job, programs=None):
        raise AssertionError("compute started on bad input")

    monkeypatch.setattr(cli, "run", no_compute)
    resolved = {k: (str(assets[v]) if v in assets else v) for k, v in over.items()}
    resolved = {k: (str(tmp_path / v) if v in ("missing.png", "nowhere") else v) for k, v in resolved.items()}
    code = cli.main(_args(assets, tmp_path / "o.mp4", **resolved))
    err = capsys.readouterr().err
    assert code == 2
    assert "error:" in err and __import__("re").search(message, err), err


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


def test_jobs_file_samples_each_line_as_a_single_run_with_the_same_flags_does(assets, tmp_path):
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS=flags)
    jobs = tmp_path / "jobs.jsonl"
    lines = [
        {"image": str(assets["square.png"]), "audio": str(assets["a.wav"]), "out": str(tmp_path / "a.mp4")},
        {"image": str(assets["tall.jpg"]), "audio": str(assets["a.wav"]), "out": str(tmp_path / "b.mp4")},
    ]
    jobs.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    shared = [a for a in _args(assets, tmp_path / "unused.mp4")]
    for flag in ("--image", "--audio", "--out"):  # set per line instead
        i = shared.index(flag)
        del shared[i : i + 2]
    for cmd in (
        [*shared, "--jobs", str(jobs)],
        _args(assets, tmp_path / "single.mp4", **{"--image": assets["tall.jpg"]}),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "launch.sample", *cmd], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert _probe(tmp_path / "a.mp4")[1:3] == (64, 64)  # the square bucket, then the portrait one
    batch, single = _frames(tmp_path / "b.mp4"), _frames(tmp_path / "single.mp4")
    assert batch.shape == single.shape and batch.shape[1] > batch.shape[2]
    # the second line, sampled after the first in the same process, is the video its single run draws
    np.testing.assert_array_equal(batch, single)


def _line(out: str, audio: str = "a.wav", **extra) -> dict:
    return {"image": "square.png", "audio": audio, "out": out, **extra}


@pytest.mark.parametrize(
    "lines,flags,message",
    [
        ([], ["--image", "square.png"], "--jobs sets --image per line"),
        (["{not json"], [], "line 1: not JSON"),
        ([{"image": "square.png", "audio": "a.wav"}], [], "line 1: .*missing \\['out'\\]"),
        ([_line("x.mp4", fps=3)], [], "unknown keys \\['fps'\\]"),
        ([_line("x.mp4"), _line("x.mp4")], [], "line 2: out .*x.mp4 is already another line's"),
        ([_line("x.mp4"), _line("y.mp4", "empty.wav")], [], "--jobs line 2 .*y.mp4.*audio has no samples"),
        ([], [], "has no lines"),
    ],
)
def test_a_bad_jobs_file_fails_before_any_video_naming_its_line(
    assets, tmp_path, capsys, monkeypatch, lines, flags, message
):
    def no_compute(job, programs=None):
        raise AssertionError("compute started on bad input")

    monkeypatch.setattr(cli, "run", no_compute)

    def place(v):
        return str(assets[v]) if v in assets else str(tmp_path / v)

    def encode(line):
        if isinstance(line, str):
            return line
        return json.dumps({k: place(v) if isinstance(v, str) else v for k, v in line.items()})

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(encode(line) for line in lines))
    argv = ["--checkpoint", str(assets["run"]), "--vae", str(assets["vae"]), "--jobs", str(jobs)]
    argv += ["--audio_frontend", "logmel", "--segment_frames", "17", "--fps", str(FPS)]
    argv += [flags[0], place(flags[1])] if flags else []
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and __import__("re").search(message, err), err


def test_without_jobs_the_image_audio_and_out_flags_are_required(assets, capsys):
    assert cli.main(["--checkpoint", str(assets["run"]), "--image", str(assets["square.png"])]) == 2
    assert "--audio, --out required (or --jobs FILE" in capsys.readouterr().err


def test_existing_output_is_never_overwritten_without_the_flag(assets, tmp_path, capsys, monkeypatch):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"precious")
    monkeypatch.setattr(cli, "run", lambda job, programs=None: None)
    assert cli.main(_args(assets, out)) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"precious"


def test_help_explains_every_flag():
    text = cli.build_parser().format_help()
    for flag in (
        "--image",
        "--audio",
        "--pose",
        "--prompt",
        "--checkpoint",
        "--vae",
        "--wav2vec",
        "--audio_frontend",
        "--text_encoder",
        "--steps",
        "--shift",
        "--seed",
        "--cfg_text",
        "--cfg_audio",
        "--cfg_pose",
        "--cfg_schedule",
        "--cfg_floor",
        "--solver",
        "--fps",
        "--out",
        "--segment_frames",
        "--use_ema",
        "--pixel_budget",
        "--jobs",
    ):
        assert flag in text


@pytest.mark.parametrize("channels,layout", [(1, "mono"), (2, "stereo")])
def test_video_writer_keeps_the_audio_layout_and_every_frame(tmp_path, channels, layout):
    rate, fps = 22050, 8.0
    audio = (0.1 * np.random.default_rng(0).standard_normal((channels, rate))).astype(np.float32)  # 1 s
    out = tmp_path / "w.mp4"
    writer = cli.VideoWriter(out, fps, (32, 48), (audio, rate))
    writer.write(np.zeros((5, 32, 48, 3), np.uint8), last=False)
    writer.write(np.full((3, 32, 48, 3), 200, np.uint8), last=True)
    writer.close()
    frames, width, height, layouts = _probe(out)
    assert (frames, width, height, layouts) == (8, 48, 32, [layout])
    assert not list(tmp_path.glob(".w.mp4.tmp*"))  # the temporary file was renamed into place
