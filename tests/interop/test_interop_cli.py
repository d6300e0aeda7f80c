"""The interop CLIs end to end: `launch.import_torch` (diffusers HunyuanVideo transformer + VAE -> an
init_from checkpoint) then `launch.export_torch` (-> sharded bf16 safetensors + config.json + VAE), their
`--help`, and their errors on bad input (missing file, truncated safetensors, config/preset mismatch).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from safetensors.numpy import load_file  # noqa: E402

from tests.interop import DIFFUSERS_TINY_HUNYUAN  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = DIFFUSERS_TINY_HUNYUAN
CONFIG = ["--config=configs/stage1.py:tiny", "--config.model.pooled_text_dim=16"]


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    transformer = diffusers.HunyuanVideoTransformer3DModel(**TINY).eval()
    transformer.save_pretrained(folder / "transformer")
    vae = diffusers.AutoencoderKLHunyuanVideo(
        latent_channels=4, block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4
    )
    vae.save_pretrained(folder / "vae")
    return folder, transformer


@pytest.mark.parametrize(
    ("module", "flag_names"),
    [
        (
            "launch.export_torch",
            ["checkpoint", "out", "weights", "dtype", "max_shard_size", "read_bytes", "vae"],
        ),
        ("launch.import_torch", ["config", "transformer", "vae", "out", "strict", "overwrite"]),
    ],
)
def test_help_explains_every_flag(module, flag_names):
    result = run(module, "--help")
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stderr  # absl exits 1
    for name in flag_names:
        found = re.search(rf"^\s*--(\[no\])?{name}:(.*)$", result.stdout, re.MULTILINE)
        assert found and len(found.group(2).strip()) > 10, f"--{name} missing or unexplained in --help"


def test_import_then_export_cli_round_trip(sources, tmp_path):
    folder, transformer = sources
    imported = run(
        "launch.import_torch",
        *CONFIG,
        f"--transformer={folder / 'transformer'}",
        f"--vae={folder / 'vae'}",
        f"--out={tmp_path / 'init'}",
    )
    assert imported.returncode == 0, imported.stderr
    assert (tmp_path / "init/checkpoints/0/state").is_dir() and (tmp_path / "init/vae/config.json").is_file()

    exported = run(
        "launch.export_torch",
        f"--checkpoint={tmp_path / 'init'}",
        f"--out={tmp_path / 'export'}",
        "--weights=params",
        "--dtype=bf16",
        "--max_shard_size=100KB",
        f"--vae={tmp_path / 'init/vae'}",
    )
    assert exported.returncode == 0, exported.stderr
    out = tmp_path / "export"
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1

    # every HunyuanVideo tensor survives import + export (bf16 storage) exactly as bf16 rounds it
    exported_tensors = {}
    for shard in out.glob("model-*.safetensors"):
        with torch.no_grad():
            from safetensors.torch import load_file as load_torch

            exported_tensors.update(load_torch(str(shard)))
    for key, value in transformer.state_dict().items():
        assert exported_tensors[key].dtype == torch.bfloat16, key
        assert torch.equal(exported_tensors[key], value.to(torch.bfloat16)), key

    from omnihuman_jax.interop.torch_dit import OmniHumanDiTTorch

    assert OmniHumanDiTTorch.from_pretrained(out).proj_out.weight.dtype == torch.float32
    src_vae = load_file(str(folder / "vae/diffusion_pytorch_model.safetensors"))
    out_vae = load_file(str(out / "vae/diffusion_pytorch_model.safetensors"))
    assert sorted(src_vae) == sorted(out_vae)
    for key in src_vae:
        np.testing.assert_array_equal(src_vae[key], out_vae[key], err_msg=key)


def test_cli_errors_name_the_bad_input(sources, tmp_path):
    folder, _ = sources
    missing = run("launch.export_torch", f"--checkpoint={tmp_path / 'nothing'}", f"--out={tmp_path / 'x'}")
    assert missing.returncode == 2 and "nothing" in missing.stderr

    mismatch = run(
        "launch.import_torch",
        "--config=configs/stage1.py:tiny",
        f"--transformer={folder / 'transformer'}",
        f"--out={tmp_path / 'y'}",
    )
    assert mismatch.returncode == 2 and "model.pooled_text_dim=0" in mismatch.stderr

    bad = tmp_path / "truncated"
    bad.mkdir()
    (bad / "config.json").write_text((folder / "transformer/config.json").read_text())
    data = (folder / "transformer/diffusion_pytorch_model.safetensors").read_bytes()
    (bad / "diffusion_pytorch_model.safetensors").write_bytes(data[: len(data) // 3])
    truncated = run("launch.import_torch", *CONFIG, f"--transformer={bad}", f"--out={tmp_path / 'z'}")
    assert truncated.returncode == 2 and "diffusion_pytorch_model.safetensors" in truncated.stderr
    assert "truncated or corrupt" in truncated.stderr
