"""Export parity: the JAX OmniHuman DiT (the reference) vs its PyTorch port loaded from the export, fp32.

A checkpoint is written with the trainer's `Checkpointer`, exported with `export_checkpoint` (sharded into
several safetensors files), loaded with `OmniHumanDiTTorch.from_pretrained` (strict), and both models run
the same random inputs with every condition active, then with each one dropped. Error measure: the max
absolute difference divided by the max absolute reference output.

Configs: `tiny` (stage 3, unrolled blocks) and a `small`-width model (hidden 512, 8 heads, the small
preset's audio/pose settings, pooled text + guidance embedding, scanned blocks) with 2 + 2 blocks instead of
4 + 4 and a 3 x 16 x 16 latent, to stay fast on CPU.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

torch = pytest.importorskip("torch")

from omnihuman_jax import sharding as shd  # noqa: E402
from omnihuman_jax.checkpointing import Checkpointer  # noqa: E402
from omnihuman_jax.conditions import CONDITIONS, INDEX  # noqa: E402
from omnihuman_jax.flow_matching import shift_timesteps  # noqa: E402
from omnihuman_jax.interop.export_torch import export_checkpoint  # noqa: E402
from omnihuman_jax.interop.torch_dit import (  # noqa: E402
    OmniHumanDiTTorch,
    euler_step,
    sample_euler_cfg,
    timestep_grid,
)
from tests.model_fixtures import build, inputs_from_batch, random_batch, tiny_config  # noqa: E402

TOL = 1e-4
CASES = (None, *CONDITIONS)  # batch row i: all conditions active (row 0), then each one dropped


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def small_config():
    from configs import stage3

    cfg = stage3.get_config("small")
    cfg.model.update(num_dual_blocks=2, num_single_blocks=2, pooled_text_dim=64, guidance_embeds=True)
    cfg.model.scan_layers = True
    cfg.shape.update(latent_frames=3, latent_height=8, latent_width=8, text_len=8)
    return cfg


def make_batch(cfg, seed: int = 0) -> dict[str, np.ndarray]:
    """One row per case of CASES: row 0 keeps every condition, row i drops CONDITIONS[i - 1]."""
    batch = random_batch(cfg, batch_size=len(CASES), seed=seed)
    batch["motion_mask"][:, :2] = True  # the paper's 5 motion frames = latent frames 0 and 1
    batch["motion_mask"][::2, 1] = False
    batch["text_mask"][1::2, 3:] = False
    for row, name in enumerate(CASES):
        if name is not None:
            batch["condition_mask"][row, INDEX[name]] = False
    if "guidance" in batch:
        batch["guidance"] = np.linspace(1.0, 6.0, len(CASES)).astype(np.float32)
    if "audio_region" in batch:  # model.audio_gate: a landmark region, 0 or 1 per latent cell
        batch["audio_region"] = (batch["audio_region"] > 0.5).astype(np.float32)
    return batch


T = np.linspace(0.05, 0.95, len(CASES)).astype(np.float32)


def random_params(model, inputs, seed: int) -> dict:
    """Random params of the model's shapes (every zero-init included), without compiling its init."""
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), inputs, jnp.asarray(T))["params"]))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if leaf.ndim >= 2:  # kernels: fan-in scaled
            return rng.normal(0, 0.7 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
        base = 1.0 if name == "scale" else 0.0
        return (base + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def to_torch(inputs: dict) -> dict:
    return {k: torch.from_numpy(np.array(v)) for k, v in inputs.items()}


def export_roundtrip(cfg, folder, seed: int = 1):
    """Random params -> checkpoint (params and a different EMA) -> export of the EMA -> torch model."""
    model = build(cfg)
    batch = make_batch(cfg)
    inputs = inputs_from_batch(batch)
    params = random_params(model, inputs, seed)
    rng = np.random.default_rng(seed + 1)
    ema = jax.tree.map(lambda p: (p + 0.05 * rng.normal(size=p.shape)).astype(np.float32), params)
    ckpt = Checkpointer(str(folder / "run"), async_save=False)
    meta = {"config": json.loads(cfg.to_json_best_effort())}
    ckpt.save(3, {"params": params, "ema_params": ema}, None, meta)
    ckpt.close()
    report = export_checkpoint(
        str(folder / "run"), str(folder / "export"), cfg.model, max_shard_bytes=300_000
    )
    torch_model = OmniHumanDiTTorch.from_pretrained(folder / "export").eval()
    apply = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
    ref = np.asarray(apply(ema, inputs, jnp.asarray(T)))
    return dict(
        model=model, params=ema, apply=apply, torch_model=torch_model, batch=batch, report=report, ref=ref
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_roundtrip(tiny_config(), tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return export_roundtrip(small_config(), tmp_path_factory.mktemp("small"))


def torch_forward(torch_model, batch) -> np.ndarray:
    with torch.no_grad():
        return torch_model(to_torch(inputs_from_batch(batch)), torch.from_numpy(T)).numpy()


def assert_rows_match(got: np.ndarray, ref: np.ndarray, label: str) -> None:
    errors = {CASES[i] or "none": rel_err(got[i], ref[i]) for i in range(len(CASES))}
    worst = max(errors.values())
    assert worst < TOL, f"{label}: torch vs JAX max rel error per dropped condition {errors}"


def test_tiny_torch_export_all_conditions_then_each_dropped_vs_reference(tiny):
    assert_rows_match(torch_forward(tiny["torch_model"], tiny["batch"]), tiny["ref"], "tiny")


def test_tiny_audio_gated_torch_export_vs_reference(tmp_path):
    gated = export_roundtrip(tiny_config(**{"model.audio_gate": True}), tmp_path)
    assert gated["torch_model"].config.audio_gate
    assert_rows_match(torch_forward(gated["torch_model"], gated["batch"]), gated["ref"], "tiny, audio gate")


def test_tiny_audio_frame_pos_torch_export_vs_reference(tmp_path):
    run = export_roundtrip(tiny_config(**{"model.audio_frame_pos": True}), tmp_path)
    assert run["torch_model"].config.audio_frame_pos
    exported = run["torch_model"].audio_projector.frame_pos.detach().numpy()
    np.testing.assert_array_equal(exported, np.asarray(run["params"]["audio_projector"]["frame_pos"]))
    assert_rows_match(torch_forward(run["torch_model"], run["batch"]), run["ref"], "tiny, audio frame_pos")


def test_small_scanned_torch_export_all_conditions_then_each_dropped_vs_reference(small):
    assert_rows_match(torch_forward(small["torch_model"], small["batch"]), small["ref"], "small (2+2 blocks)")


def test_export_is_sharded_with_an_index(tiny):
    files = tiny["report"].files
    assert len(files) > 1 and all(f.startswith("model-") for f in files)


def test_each_dropped_condition_changes_the_output(tiny):
    """Every pathway is live (so the parity above is not vacuous): row i differs from the same row with all
    conditions active."""
    batch = {k: v.copy() for k, v in tiny["batch"].items()}
    batch["condition_mask"][:] = True
    full = torch_forward(tiny["torch_model"], batch)
    dropped = torch_forward(tiny["torch_model"], tiny["batch"])
    for i, name in enumerate(CASES[1:], start=1):
        assert np.abs(dropped[i] - full[i]).max() > 1e-3, name


def jax_first_euler_step(apply, params, inputs, noise, known_mask, t, t_next, s_text, s_audio):
    """The reference: three JAX branch evaluations (audio mode), CFG combination, Euler update (numpy)."""
    branches = (
        ("reference", "motion"),
        ("text", "reference", "motion"),
        ("text", "reference", "audio", "motion"),
    )
    known = np.asarray(inputs["motion_latents"])
    m = known_mask[:, :, None, None, None]
    x = np.where(m, (1 - t) * known + t * noise, noise).astype(np.float32)
    b = noise.shape[0]
    v = []
    for active in branches:
        mask = np.array([[c in active for c in CONDITIONS]] * b)
        branch = {**inputs, "noisy_latents": x, "condition_mask": mask}
        v.append(np.asarray(apply(params, branch, np.full((b,), t, np.float32))))
    guided = v[0] + s_text * (v[1] - v[0]) + s_audio * (v[2] - v[1])
    return x + (t_next - t) * guided, x


def test_torch_first_guided_euler_step_vs_reference(tiny):
    batch = {k: v.copy() for k, v in tiny["batch"].items()}
    batch["condition_mask"][:] = True
    inputs = inputs_from_batch(batch)
    noise = np.random.default_rng(5).normal(size=batch["latents"].shape).astype(np.float32)
    ts = timestep_grid(8, shift=3.0)
    np.testing.assert_allclose(ts, np.asarray(shift_timesteps(np.linspace(1, 0, 9), 3.0)), atol=1e-6)
    ref, x0 = jax_first_euler_step(
        tiny["apply"], tiny["params"], inputs, noise, batch["motion_mask"], ts[0], ts[1], 4.0, 2.5
    )
    with torch.no_grad():
        got = euler_step(
            tiny["torch_model"], to_torch(inputs), torch.from_numpy(x0), ts[0], ts[1], "audio", 4.0, 2.5
        )
    err = rel_err(got.numpy(), ref)
    assert err < TOL, f"first guided Euler step, torch vs JAX: max rel error {err:.2e}"


def test_torch_guidance_modes_have_the_jax_sampler_branches():
    from omnihuman_jax.guidance import guidance_mode
    from omnihuman_jax.interop.torch_dit import GUIDANCE_MODES

    jax_modes = {m: guidance_mode(m) for m in ("audio", "combined", "pose")}
    jax_modes["pose_guided"] = guidance_mode("pose", pose_guidance=True)
    assert set(GUIDANCE_MODES) == set(jax_modes)
    for name, mode in jax_modes.items():
        torch_masks = tuple(tuple(c in active for c in CONDITIONS) for active in GUIDANCE_MODES[name])
        assert torch_masks == mode.branch_masks, name


def spread(shape: tuple[int, ...], mesh) -> NamedSharding:
    """Shards the last two axes over (fsdp, tensor) where they divide, as FSDP + tensor parallelism do."""
    axes = [None] * len(shape)
    if len(shape) >= 2 and shape[-2] % mesh.shape["fsdp"] == 0 and shape[-1] % mesh.shape["tensor"] == 0:
        axes[-2:] = ["fsdp", "tensor"]
    return NamedSharding(mesh, PartitionSpec(*axes))


def test_export_of_a_checkpoint_saved_on_8_device_mesh_vs_reference(tiny, tmp_path):
    """Params sharded over fsdp=4 x tensor=2 are saved, exported a few leaves per read, and match JAX."""
    cfg = tiny_config(**{"mesh.data": 1, "mesh.fsdp": 4, "mesh.tensor": 2})
    mesh = shd.make_mesh(dict(cfg.mesh))
    sharded = jax.tree.map(lambda p: jax.device_put(p, spread(p.shape, mesh)), tiny["params"])
    leaves = jax.tree.leaves(sharded)
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated for x in leaves)
    ckpt = Checkpointer(str(tmp_path / "run"), async_save=False)
    ckpt.save(1, {"params": sharded}, None, {"config": json.loads(cfg.to_json_best_effort())})
    ckpt.close()
    step_dir = str(tmp_path / "run/checkpoints/1")
    export_checkpoint(step_dir, str(tmp_path / "export"), cfg.model, which="params", read_bytes=40_000)
    got = torch_forward(OmniHumanDiTTorch.from_pretrained(tmp_path / "export"), tiny["batch"])
    assert_rows_match(got, tiny["ref"], "export of the 8-device checkpoint")


def test_torch_sampler_runs_to_data_and_keeps_motion_frames(tiny):
    batch = {k: v.copy() for k, v in tiny["batch"].items()}
    inputs = to_torch(inputs_from_batch(batch))
    noise = torch.from_numpy(np.random.default_rng(7).normal(size=batch["latents"].shape).astype(np.float32))
    out = sample_euler_cfg(tiny["torch_model"], inputs, noise, num_steps=2, mode="audio", schedule="cosine")
    assert out.shape == noise.shape and torch.isfinite(out).all()
    known = batch["motion_mask"] & batch["condition_mask"][:, INDEX["motion"], None]  # (B, T)
    motion = inputs["motion_latents"].numpy()
    np.testing.assert_allclose(out.numpy()[known], motion[known], atol=1e-6)
    assert np.abs(out.numpy()[~known] - noise.numpy()[~known]).max() > 1e-2
