"""Import parity: a tiny random diffusers `HunyuanVideoTransformer3DModel` (the reference) imported as our
params; our JAX model on text-to-video (reference, audio, pose, motion off) must equal diffusers' output.

The diffusers model is saved sharded (`*.safetensors.index.json`) so the lazy reader is exercised, and the
import places params on a 2-way fsdp mesh. The round trip import -> orbax checkpoint -> export -> PyTorch
module gives the same outputs and the same tensors. The VAE's own parity against
`AutoencoderKLHunyuanVideo` is tests/models/test_vae_vs_reference.py; here the import copies it intact.
Error measure: max absolute difference over max absolute reference output, fp32.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from omnihuman_jax import sharding as shd  # noqa: E402
from omnihuman_jax.checkpointing import restore_params_only  # noqa: E402
from omnihuman_jax.conditions import INDEX  # noqa: E402
from omnihuman_jax.interop.export_torch import export_checkpoint, is_addition  # noqa: E402
from omnihuman_jax.interop.import_hunyuan import import_transformer, save_imported  # noqa: E402
from omnihuman_jax.interop.torch_dit import OmniHumanDiTTorch  # noqa: E402
from tests.interop import DIFFUSERS_TINY_HUNYUAN  # noqa: E402
from tests.model_fixtures import build, inputs_from_batch, random_batch, tiny_config  # noqa: E402

TOL = 1e-4
T = np.array([0.23, 0.71], np.float32)
DIFFUSERS_TINY = {**DIFFUSERS_TINY_HUNYUAN, "guidance_embeds": True}
# our tiny preset already has hidden 64, 2 heads, 1 + 1 + 1 blocks, text_dim 32, rope (8, 12, 12)
OURS = {"model.pooled_text_dim": 16, "model.guidance_embeds": True, "mesh.data": -1, "mesh.fsdp": 2}


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def diffusers_model(seed: int = 0):
    torch.manual_seed(seed)
    model = diffusers.HunyuanVideoTransformer3DModel(**DIFFUSERS_TINY).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def diffusers_forward(model, batch: dict) -> np.ndarray:
    """diffusers on our batch: (B, C, T, H, W) latents, network timestep 1000 t, guidance 1000 g."""
    with torch.no_grad():
        out = model(
            torch.from_numpy(batch["latents"]).permute(0, 4, 1, 2, 3),
            torch.from_numpy(T * 1000.0),
            torch.from_numpy(batch["text_emb"]),
            torch.from_numpy(batch["text_mask"]).long(),
            torch.from_numpy(batch["text_pooled"]),
            guidance=torch.from_numpy(batch["guidance"] * 1000.0),
            return_dict=False,
        )[0]
    return out.permute(0, 2, 3, 4, 1).numpy()


def text_to_video_batch(cfg, *, others_on: bool = False) -> dict:
    batch = random_batch(cfg, seed=3)
    batch["text_mask"][:] = True
    batch["text_mask"][1, 5:] = False  # diffusers assumes valid tokens first
    batch["guidance"] = np.array([3.5, 6.0], np.float32)
    batch["motion_mask"][:, :2] = True
    batch["condition_mask"][:] = others_on
    batch["condition_mask"][:, INDEX["text"]] = True
    batch["condition_mask"][:, INDEX["reference"]] = False
    return batch


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hv")
    reference = diffusers_model()
    reference.save_pretrained(folder / "transformer", max_shard_size="40KB")
    assert list((folder / "transformer").glob("*.safetensors.index.json")), "expected a sharded save"
    cfg = tiny_config(**OURS)
    mesh = shd.make_mesh(dict(cfg.mesh))
    params, report = import_transformer(str(folder / "transformer"), cfg, mesh)
    model = build(cfg)
    apply = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
    return dict(
        folder=folder, reference=reference, cfg=cfg, params=params, report=report, apply=apply, mesh=mesh
    )


def test_import_hunyuan_vs_reference(imported):
    batch = text_to_video_batch(imported["cfg"])
    ours = np.asarray(imported["apply"](imported["params"], inputs_from_batch(batch), T))
    ref = diffusers_forward(imported["reference"], batch)
    err = rel_err(ours, ref)
    assert err < TOL, f"imported JAX model vs diffusers HunyuanVideo, text-to-video: max rel error {err:.2e}"


def test_imported_additions_leave_text_to_video_unchanged_with_audio_pose_motion_on(imported):
    """Zero-init audio outputs and condition channels: at step 0 audio, pose and motion change nothing."""
    batch = text_to_video_batch(imported["cfg"], others_on=True)
    ours = np.asarray(imported["apply"](imported["params"], inputs_from_batch(batch), T))
    err = rel_err(ours, diffusers_forward(imported["reference"], batch))
    assert err < TOL, f"max rel error {err:.2e}"


def test_import_maps_every_tensor_and_initialises_only_additions(imported):
    report = imported["report"]
    assert report.unmapped == []
    assert report.loaded == len(imported["reference"].state_dict())
    assert report.initialised and all(is_addition(k) for k in report.initialised)
    assert any(".audio_attn.to_out." in k for k in report.initialised)
    assert "cond_embedder.proj.weight" in report.initialised


def test_imported_params_are_sharded_over_the_mesh(imported):
    kernel = imported["params"]["transformer_blocks_0"]["ff"]["proj_in"]["kernel"]  # ("embed", "mlp")
    assert kernel.sharding.mesh.shape["fsdp"] == 2
    assert not kernel.sharding.is_fully_replicated
    assert tuple(kernel.sharding.spec)[0] == "fsdp"


def test_import_save_export_torch_round_trip_vs_reference(imported, tmp_path):
    """import -> orbax checkpoint (init_from-compatible) -> export -> PyTorch equals diffusers; the exported
    HunyuanVideo tensors equal the original ones bit for bit."""
    cfg, params = imported["cfg"], imported["params"]
    save_imported(str(tmp_path / "init"), params, cfg, {"imported_from": "test"})
    loaded, names, kept = restore_params_only(str(tmp_path / "init"), params)
    assert kept == [] and len(names) == len(jax.tree.leaves(params))

    export_checkpoint(str(tmp_path / "init"), str(tmp_path / "export"), cfg.model, which="params")
    torch_model = OmniHumanDiTTorch.from_pretrained(tmp_path / "export")
    batch = text_to_video_batch(cfg)
    with torch.no_grad():
        tin = {k: torch.from_numpy(np.array(v)) for k, v in inputs_from_batch(batch).items()}
        got = torch_model(tin, torch.from_numpy(T)).numpy()
    err = rel_err(got, diffusers_forward(imported["reference"], batch))
    assert err < TOL, f"round-trip PyTorch model vs diffusers: max rel error {err:.2e}"

    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    original = {k: v.numpy() for k, v in imported["reference"].state_dict().items()}
    assert sorted(k for k in exported if not is_addition(k)) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_config_mismatch_names_the_field(imported):
    cfg = tiny_config(**{**OURS, "model.text_dim": 48})
    with pytest.raises(ValueError, match=r"model\.text_dim=48 .* gives 32"):
        import_transformer(str(imported["folder"] / "transformer"), cfg, imported["mesh"])


def single_file_copy(imported, folder, edit) -> str:
    """The reference saved as one safetensors file, with `edit(tensors)` applied."""
    src = imported["folder"] / "transformer"
    tensors = {k: v.numpy() for k, v in imported["reference"].state_dict().items()}
    edit(tensors)
    folder.mkdir()
    (folder / "config.json").write_text((src / "config.json").read_text())
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))
    return str(folder)


def test_shape_mismatch_names_the_tensor(imported, tmp_path):
    def shrink(t):
        t["proj_out.bias"] = t["proj_out.bias"][:-1]

    folder = single_file_copy(imported, tmp_path / "bad", shrink)
    with pytest.raises(ValueError, match=r"tensor proj_out\.bias has the wrong shape \(15,\)"):
        import_transformer(folder, imported["cfg"], imported["mesh"])


def test_missing_tensor_is_named(imported, tmp_path):
    folder = single_file_copy(imported, tmp_path / "bad", lambda t: t.pop("norm_out.linear.weight"))
    with pytest.raises(ValueError, match=r"norm_out\.linear\.weight"):
        import_transformer(folder, imported["cfg"], imported["mesh"])


def test_unmapped_tensor_is_reported_and_fails_when_strict(imported, tmp_path):
    def extra(t):
        t["extra_head.weight"] = np.zeros((2, 2), np.float32)

    folder = single_file_copy(imported, tmp_path / "extra", extra)
    _, report = import_transformer(folder, imported["cfg"], imported["mesh"])
    assert report.unmapped == ["extra_head.weight"]
    with pytest.raises(ValueError, match="extra_head.weight"):
        import_transformer(folder, imported["cfg"], imported["mesh"], strict=True)


def test_truncated_or_missing_shard_names_the_file(imported, tmp_path):
    src = imported["folder"] / "transformer"
    bad = tmp_path / "truncated"
    bad.mkdir()
    for f in src.iterdir():
        bad.joinpath(f.name).write_bytes(f.read_bytes())
    index = json.loads(next(bad.glob("*.index.json")).read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    data = (bad / shard).read_bytes()
    (bad / shard).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=shard):
        import_transformer(str(bad), imported["cfg"], imported["mesh"])
    (bad / shard).unlink()
    with pytest.raises(FileNotFoundError, match=shard):
        import_transformer(str(bad), imported["cfg"], imported["mesh"])
