"""diffusers `HunyuanVideoTransformer3DModel` folder -> OmniHuman DiT params (OmniHuman-1, section 3.3).

Stage 1 starts from a public text-to-video model: every tensor of the diffusers checkpoint maps to one of
our params (the names of `export_torch.py`, inverted), shapes are checked tensor by tensor, and tensors
that map to nothing are reported. The OmniHuman additions (`cond_embedder`, `audio_projector`,
`pose_guider`, every block's `audio_attn`) take the model's own init, whose output projections are zero,
so at step 0 the imported model equals the diffusers model on text-to-video.

Large checkpoints: a sharded `*.safetensors.index.json` is read lazily with `safe_open`, one tensor at a
time, and each param is placed straight into its mesh sharding with `jax.make_array_from_callback`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from omnihuman_jax import sharding as shd
from omnihuman_jax.batch import zeros_batch
from omnihuman_jax.checkpointing import Checkpointer
from omnihuman_jax.conditions import model_inputs
from omnihuman_jax.interop.diffusers_vae import load_vae
from omnihuman_jax.interop.export_torch import (
    STACKED,
    is_addition,
    to_flax,
    torch_key,
    torch_shape,
    unstacked_paths,
)
from omnihuman_jax.models.dit import DiTConfig, OmniHumanDiT

CONFIG_NAME = "config.json"
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


def read_diffusers_config(folder: Path) -> dict:
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(
            f"{file}: not found (expected a diffusers HunyuanVideoTransformer3DModel folder)"
        )
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: invalid JSON ({e})") from e


def check_config(model: DiTConfig, d: dict, source: str) -> None:
    """Fails naming every model field that disagrees with the diffusers config."""
    heads, head_dim = d.get("num_attention_heads", 24), d.get("attention_head_dim", 128)
    expected = {
        "hidden_size": heads * head_dim,
        "num_heads": heads,
        "num_dual_blocks": d.get("num_layers", 20),
        "num_single_blocks": d.get("num_single_layers", 40),
        "num_refiner_blocks": d.get("num_refiner_layers", 2),
        "mlp_ratio": float(d.get("mlp_ratio", 4.0)),
        "patch_size": d.get("patch_size", 2),
        "latent_channels": d.get("in_channels", 16),
        "text_dim": d.get("text_embed_dim", 4096),
        "pooled_text_dim": d.get("pooled_projection_dim", 768),
        "guidance_embeds": bool(d.get("guidance_embeds", True)),
        "rope_theta": float(d.get("rope_theta", 256.0)),
        "rope_axes_dim": tuple(d.get("rope_axes_dim", (16, 56, 56))),
    }
    problems = [
        f"model.{k}={getattr(model, k)!r} but {source} gives {v!r}"
        for k, v in expected.items()
        if (tuple(getattr(model, k)) if k == "rope_axes_dim" else getattr(model, k)) != v
    ]
    unsupported = {
        "patch_size_t": (d.get("patch_size_t", 1), 1),
        "out_channels": (d.get("out_channels") or d.get("in_channels", 16), d.get("in_channels", 16)),
        "qk_norm": (d.get("qk_norm", "rms_norm"), "rms_norm"),
        "image_condition_type": (d.get("image_condition_type"), None),
    }
    problems += [
        f"{source}: {k}={got!r} is not supported (need {want!r})"
        for k, (got, want) in unsupported.items()
        if got != want
    ]
    if problems:
        raise ValueError(
            "the diffusers transformer does not match the model config (set --config.model.* or pick the "
            "matching preset):\n  " + "\n  ".join(problems)
        )


class LazyTensors:
    """Tensor name -> file of a diffusers weights folder (single file or sharded index), read on demand."""

    def __init__(self, folder: Path):
        self.folder = folder
        index = sorted(folder.glob("*.safetensors.index.json"))
        if index:
            try:
                weight_map = json.loads(index[0].read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{index[0]}: not a valid safetensors index ({e})") from e
            self.files = {k: folder / v for k, v in weight_map.items()}
        else:
            single = [folder / n for n in WEIGHT_NAMES if (folder / n).is_file()]
            if not single:
                raise FileNotFoundError(f"{folder}: no {WEIGHT_NAMES[0]} nor *.safetensors.index.json")
            self.files = {k: single[0] for k in self._keys(single[0])}
        for file in sorted(set(self.files.values())):
            if not file.is_file():
                raise FileNotFoundError(f"{file}: weight shard named in the index is missing")

    @staticmethod
    def _keys(file: Path) -> list[str]:
        try:
            with safe_open(str(file), framework="pt") as f:
                return list(f.keys())
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{file}: unreadable safetensors file (truncated or corrupt?): {e}") from e

    def keys(self) -> set[str]:
        return set(self.files)

    def get(self, key: str) -> np.ndarray:
        """One tensor as float32 numpy (bf16 / fp16 checkpoints included)."""
        file = self.files[key]
        try:
            with safe_open(str(file), framework="pt") as f:
                return f.get_tensor(key).float().numpy()
        except (SafetensorError, OSError, RuntimeError) as e:
            raise ValueError(f"{file}: tensor {key} unreadable (truncated or corrupt file?): {e}") from e


@dataclasses.dataclass
class ImportReport:
    loaded: int  # diffusers tensors used
    initialised: list[str]  # OmniHuman additions left at their init (torch names)
    unmapped: list[str]  # diffusers tensors that map to no param


def _tiny_batch(config: Any) -> dict[str, np.ndarray]:
    """A 1-frame, 1-patch batch: param shapes do not depend on the video size."""
    small = config.copy_and_resolve_references()
    with small.unlocked():
        p = small.model.patch_size
        small.shape.update(latent_frames=1, latent_height=p, latent_width=p, text_len=2)
    return zeros_batch(small, 1)


def _init_fn(model: OmniHumanDiT):
    def init(rng, batch):
        return model.init(rng, model_inputs(batch, batch["latents"]), jnp.zeros((1,)))["params"]

    return init


def import_transformer(
    transformer_dir: str, config: Any, mesh, *, strict: bool = False
) -> tuple[Any, ImportReport]:
    """Reads the diffusers transformer into params laid out in their mesh sharding (from `config.model`)."""
    folder = Path(transformer_dir)
    dit_cfg = DiTConfig.from_config(config.model)
    check_config(dit_cfg, read_diffusers_config(folder), f"{folder / CONFIG_NAME}")
    tensors = LazyTensors(folder)
    model = OmniHumanDiT(dit_cfg)
    rules = config.sharding.logical_axis_rules
    batch = _tiny_batch(config)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.rules_tuple(rules)):
        boxed = jax.eval_shape(_init_fn(model), jax.random.key(0), batch)
        shardings = shd.logical_to_sharding(boxed, mesh, rules)
        abstract = jax.eval_shape(lambda r, b: nn.unbox(_init_fn(model)(r, b)), jax.random.key(0), batch)

    flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
    paths = [tuple(k.key for k in kp) for kp, _ in flat]
    keys_of = {
        p: [torch_key(q) for q in unstacked_paths(p, leaf.shape)]
        for p, (_, leaf) in zip(paths, flat, strict=True)
    }
    additions = {p for p, ks in keys_of.items() if all(is_addition(k) for k in ks)}
    missing = [k for p, ks in keys_of.items() if p not in additions for k in ks if k not in tensors.keys()]
    if missing:
        raise ValueError(f"{folder}: {len(missing)} tensors of the model are missing, e.g. {missing[:5]}")
    used = {k for p, ks in keys_of.items() if p not in additions for k in ks}
    unmapped = sorted(tensors.keys() - used)
    if unmapped and strict:
        raise ValueError(f"{folder}: {len(unmapped)} tensors map to no param: {unmapped[:10]}")

    init_values = _init_additions(model, batch, config.seed, shardings, additions, paths, mesh, rules)
    sh_flat = dict(
        zip(
            paths,
            jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)),
            strict=True,
        )
    )
    values = []
    for path, (_, leaf) in zip(paths, flat, strict=True):
        if path in additions:
            values.append(init_values[path])
            continue
        host = _read_leaf(tensors, path, keys_of[path], leaf, dit_cfg)
        values.append(jax.make_array_from_callback(leaf.shape, sh_flat[path], lambda idx, h=host: h[idx]))
        del host
    params = jax.tree.unflatten(jax.tree.structure(abstract), values)
    report = ImportReport(len(used), sorted(k for p in additions for k in keys_of[p]), unmapped)
    return params, report


def _read_leaf(tensors: LazyTensors, path, keys: list[str], leaf, cfg: DiTConfig) -> np.ndarray:
    """One param leaf (a scanned stack: its L layers stacked) in flax layout, shape-checked per tensor."""
    stacked = path[0] in STACKED
    want = leaf.shape[1:] if stacked else leaf.shape
    layers = []
    for key in keys:
        value = tensors.get(key)
        need = torch_shape(key, tuple(want), cfg)
        if tuple(value.shape) != need:
            raise ValueError(
                f"{tensors.files[key]}: tensor {key} has the wrong shape {tuple(value.shape)}; the model "
                f"config needs {need} (for params/{'/'.join(path)})"
            )
        value = to_flax(key, value, cfg)
        layers.append(value.astype(leaf.dtype))
    return np.stack(layers) if stacked else layers[0]


def _init_additions(model, batch, seed, shardings, additions, paths, mesh, rules) -> dict:
    """The init of the OmniHuman additions only, sharded (XLA drops the rest of the init as dead code)."""
    index = [i for i, p in enumerate(paths) if p in additions]
    sh_list = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))

    def init_additions(rng, b):
        leaves = jax.tree.leaves(nn.unbox(_init_fn(model)(rng, b)))
        return [leaves[i] for i in index]

    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.rules_tuple(rules)):
        out = jax.jit(init_additions, out_shardings=[sh_list[i] for i in index])(jax.random.key(seed), batch)
    return {paths[i]: v for i, v in zip(index, out, strict=True)}


def save_imported(out_dir: str, params: Any, config: Any, meta_extra: dict) -> str:
    """Writes `<out>/checkpoints/0/state` with a `params` subtree (for `--config.checkpoint.init_from`)."""
    ckpt = Checkpointer(out_dir, max_to_keep=1, async_save=False)
    try:
        meta = {"config": json.loads(config.to_json_best_effort()), "step": 0, **meta_extra}
        ckpt.save(0, {"params": params}, None, meta, force=True)
    finally:
        ckpt.close()
    return ckpt.directory


def copy_vae(vae_dir: str, out_dir: str) -> Path:
    """Checks the diffusers `AutoencoderKLHunyuanVideo` folder loads, then copies it to `<out>/vae`."""
    src, dst = Path(vae_dir), Path(out_dir) / "vae"
    load_vae(src, strict=True)  # validates config and every tensor, naming what is wrong
    dst.mkdir(parents=True, exist_ok=True)
    for file in sorted(src.iterdir()):
        if file.is_file() and (file.suffix in (".json", ".safetensors")):
            shutil.copy2(file, dst / file.name)
    return dst
