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
