"""Load / save the causal 3D VAE in diffusers' `AutoencoderKLHunyuanVideo` format (docs/design.md, "VAE API").

A VAE on disk is a folder with `config.json` and `diffusion_pytorch_model.safetensors` (or a sharded
`diffusion_pytorch_model.safetensors.index.json`). Tensors are read with safetensors' numpy API (no torch).

Name mapping (mechanical, the flax tree mirrors diffusers' modules): flax path segments `name_<i>` become
`name.<i>`; leaves `kernel`/`scale` become `weight`. Conv3d weights go OIDHW <-> DHWIO, Linear weights
(out, in) <-> (in, out); norms and biases are unchanged.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from omnihuman_jax.models.vae import VAEConfig, abstract_params

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


def diffusers_key(path: tuple[str, ...]) -> str:
    """Flax parameter path -> diffusers state-dict key."""
    modules = [re.sub(r"_(\d+)$", r".\1", p) for p in path[:-1]]
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
    return ".".join([*modules, leaf])


def _to_flax(value: np.ndarray) -> np.ndarray:
    if value.ndim == 5:  # Conv3d (O, I, D, H, W) -> (D, H, W, I, O)
        return value.transpose(2, 3, 4, 1, 0)
    if value.ndim == 2:  # Linear (out, in) -> (in, out)
        return value.T
    return value


def _to_torch(value: np.ndarray) -> np.ndarray:
    if value.ndim == 5:  # (D, H, W, I, O) -> (O, I, D, H, W)
        return value.transpose(4, 3, 0, 1, 2)
    if value.ndim == 2:
        return value.T
    return value


def _param_shapes(cfg: VAEConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flax parameter path -> shape, from an abstract init (no compute)."""
    leaves = jax.tree_util.tree_flatten_with_path(abstract_params(cfg))[0]
    return {tuple(k.key for k in key_path): tuple(leaf.shape) for key_path, leaf in leaves}


def _weight_files(folder: Path) -> list[Path]:
    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({e})") from e
        return [folder / name for name in sorted(set(weight_map.values()))]
    raise FileNotFoundError(
        f"{single}: VAE weights not found (expected a diffusers AutoencoderKLHunyuanVideo folder with "
        f"{CONFIG_NAME} and {WEIGHTS_NAME})"
    )


def _read_tensors(files: list[Path]) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: weight shard named in {INDEX_NAME} is missing")
        try:
            with safe_open(str(file), framework="numpy") as f:
                for name in f.keys():
                    tensors[name] = f.get_tensor(name)
        except SafetensorError as e:
            raise ValueError(f"{file}: unreadable safetensors file (truncated or corrupt?): {e}") from e
    return tensors


def load_vae(path: str | Path, *, dtype: Any = jnp.float32, strict: bool = False) -> tuple[VAEConfig, Any]:
    """Reads a diffusers-format VAE folder -> (VAEConfig, params).

    Every parameter of the model must be in the file with the right shape (else ValueError naming the tensor).
    Tensors of the file that map to no parameter are reported with a warning (an error when `strict`).
    """
    folder = Path(path)
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: VAE config not found (is {folder} a diffusers VAE folder?)")
    try:
        cfg = VAEConfig.from_diffusers(json.loads(config_file.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: invalid JSON ({e})") from e
    tensors = _read_tensors(_weight_files(folder))

    flat: dict[tuple[str, ...], np.ndarray] = {}
    missing, used = [], set()
    for flax_path, shape in _param_shapes(cfg).items():
        key = diffusers_key(flax_path)
        if key not in tensors:
            missing.append(key)
            continue
        value = _to_flax(tensors[key])
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{folder}: tensor {key} has shape {tuple(tensors[key].shape)}, but the config expects "
                f"{_to_torch(np.zeros(shape, np.int8)).shape}"
            )
        flat[flax_path] = value
        used.add(key)
    if missing:
        raise ValueError(f"{folder}: {len(missing)} VAE tensors missing from the weights, e.g. {missing[:5]}")
    unmapped = sorted(set(tensors) - used)
    if unmapped:
        message = f"{folder}: {len(unmapped)} tensors not used by the VAE: {unmapped[:10]}"
        if strict:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)

    params: dict[str, Any] = {}
    for flax_path, value in flat.items():
        node = params
        for name in flax_path[:-1]:
            node = node.setdefault(name, {})
        node[flax_path[-1]] = jnp.asarray(value, dtype)
    return cfg, params


def save_vae(path: str | Path, cfg: VAEConfig, params: Any, *, overwrite: bool = False) -> None:
    """Writes `params` as a diffusers `AutoencoderKLHunyuanVideo` folder (float32 weights)."""
    folder = Path(path)
    targets = [folder / CONFIG_NAME, folder / WEIGHTS_NAME]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing}: already exist; pass overwrite=True or choose another folder")
    shapes = _param_shapes(cfg)
    tensors: dict[str, np.ndarray] = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        flax_path = tuple(k.key for k in key_path)
        if shapes.get(flax_path) != tuple(leaf.shape):
            raise ValueError(f"params{list(flax_path)}: shape {leaf.shape} does not fit the config")
        value = np.asarray(jax.device_get(leaf), np.float32)
        tensors[diffusers_key(flax_path)] = np.ascontiguousarray(_to_torch(value))
    missing = set(shapes) - {
        tuple(k.key for k in kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    if missing:
        raise ValueError(f"params: {len(missing)} parameters missing, e.g. {sorted(missing)[:3]}")

    folder.mkdir(parents=True, exist_ok=True)
    config = cfg.to_diffusers()
    tmp_weights, tmp_config = targets[1].with_suffix(".tmp"), targets[0].with_suffix(".tmp")
    save_file(tensors, str(tmp_weights), metadata={"format": "pt"})
    tmp_config.write_text(json.dumps(config, indent=2) + "\n")
    tmp_weights.replace(targets[1])
    tmp_config.replace(targets[0])
