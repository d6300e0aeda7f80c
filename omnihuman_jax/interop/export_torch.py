"""JAX params <-> PyTorch state-dict names and layouts, and a streaming checkpoint -> safetensors export.

The PyTorch model (`torch_dit.py`) uses diffusers' `HunyuanVideoTransformer3DModel` names for every part
the two models share, so one table serves both the export and the diffusers import (`import_hunyuan.py`).
Layouts: Dense kernels (in, out) <-> Linear weights (out, in); the patch embeddings' (ph, pw, C)-flattened
kernels <-> Conv3d weights (D, C, 1, p, p); `proj_out`'s (ph, pw, C)-ordered features <-> diffusers'
(C, pt, ph, pw) order; Conv2d kernels (kh, kw, I, O) <-> (O, I, kh, kw); norm scales <-> `weight`.

The export reads one parameter leaf at a time from an orbax checkpoint (host numpy, whatever mesh wrote
it) and writes it straight into its safetensors shard, whose header is planned from the checkpoint's
metadata, so host memory holds one tensor at a time. Shards follow the Hugging Face layout
(`model.safetensors`, or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp

from omnihuman_jax import checkpointing as ckpt_lib

STACKED = ("transformer_blocks", "single_transformer_blocks")  # scanned stacks (leading layer axis)
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DTYPES = {"fp32": (np.float32, "F32"), "bf16": (ml_dtypes.bfloat16, "BF16"), "fp16": (np.float16, "F16")}

_R = r"context_embedder.token_refiner.refiner_blocks.\1"
# (pattern on the "/"-joined flax module path, diffusers/torch module name); the first match wins.
_MODULE_RULES: list[tuple[str, str]] = [
    (r"^(x_embedder|cond_embedder)$", r"\1.proj"),
    (r"^(timestep|text|guidance)_embedder/(linear_\d)$", r"time_text_embed.\1_embedder.\2"),
    (
        r"^context_embedder/(timestep|text)_embedder/(linear_\d)$",
        r"context_embedder.time_text_embed.\1_embedder.\2",
    ),
    (r"^context_embedder/proj_in$", "context_embedder.proj_in"),
    (r"^context_embedder/refiner_blocks_(\d+)/(to_[qkv])$", _R + r".attn.\2"),
    (r"^context_embedder/refiner_blocks_(\d+)/to_out$", _R + ".attn.to_out.0"),
    (r"^context_embedder/refiner_blocks_(\d+)/(norm1|norm2)$", _R + r".\2"),
    (r"^context_embedder/refiner_blocks_(\d+)/norm_out$", _R + ".norm_out.linear"),
    (r"^context_embedder/refiner_blocks_(\d+)/ff/proj_in$", _R + ".ff.net.0.proj"),
    (r"^context_embedder/refiner_blocks_(\d+)/ff/proj_out$", _R + ".ff.net.2"),
    (r"^(transformer_blocks|single_transformer_blocks)_(\d+)/audio_attn/(.+)$", r"\1.\2.audio_attn.\3"),
    (r"^transformer_blocks_(\d+)/(norm1|norm1_context)$", r"transformer_blocks.\1.\2.linear"),
    (r"^transformer_blocks_(\d+)/(attn|attn_context)/(.+)$", r"transformer_blocks.\1.attn.\3"),
    (r"^transformer_blocks_(\d+)/to_out$", r"transformer_blocks.\1.attn.to_out.0"),
    (r"^transformer_blocks_(\d+)/to_add_out$", r"transformer_blocks.\1.attn.to_add_out"),
    (r"^transformer_blocks_(\d+)/(ff|ff_context)/proj_in$", r"transformer_blocks.\1.\2.net.0.proj"),
    (r"^transformer_blocks_(\d+)/(ff|ff_context)/proj_out$", r"transformer_blocks.\1.\2.net.2"),
    (r"^single_transformer_blocks_(\d+)/norm$", r"single_transformer_blocks.\1.norm.linear"),
    (r"^single_transformer_blocks_(\d+)/attn/(.+)$", r"single_transformer_blocks.\1.attn.\2"),
    (r"^single_transformer_blocks_(\d+)/(proj_mlp|proj_out)$", r"single_transformer_blocks.\1.\2"),
    (r"^audio_projector/(proj_in|proj_mid|proj_out|norm)$", r"audio_projector.\1"),
    (r"^pose_guider/down_(\d+)$", r"pose_guider.down.\1"),
    (r"^pose_guider/(conv_in|conv_out)$", r"pose_guider.\1"),
    (r"^norm_out$", "norm_out.linear"),
    (r"^proj_out$", "proj_out"),
]
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
# Parameters that are not a layer's kernel, scale or bias: (flax path, torch key), same layout on both sides.
_RAW = {("audio_projector", "frame_pos"): "audio_projector.frame_pos"}
# torch-side prefixes / infixes of the OmniHuman additions (absent from a HunyuanVideo checkpoint)
ADDITIONS = ("cond_embedder.", "audio_projector.", "pose_guider.", ".audio_attn.")


def torch_key(path: tuple[str, ...]) -> str:
    """Flax param path (blocks unstacked, `transformer_blocks_3/...`) -> torch state-dict key."""
    if tuple(path) in _RAW:
        return _RAW[tuple(path)]
    module = "/".join(path[:-1])
    for pattern, repl in _MODULE_RULES:
        if re.match(pattern, module):
            if path[-1] not in _LEAVES:
                break
            return re.sub(pattern, repl, module) + "." + _LEAVES[path[-1]]
    raise KeyError(f"params/{'/'.join(path)}: no PyTorch name for this parameter")


def is_addition(key: str) -> bool:
    """True for the OmniHuman parameters that a HunyuanVideo text-to-video checkpoint lacks."""
    return key.startswith(ADDITIONS[:3]) or ADDITIONS[3] in key


def unstacked_paths(path: tuple[str, ...], shape: tuple[int, ...]) -> list[tuple[str, ...]]:
    """A scanned stack's leaf (L, ...) -> the L per-layer paths; other leaves -> [path]."""
    if path[0] in STACKED:
        return [(f"{path[0]}_{i}", *path[1:]) for i in range(shape[0])]
    return [path]


def torch_shape(key: str, shape: tuple[int, ...], cfg: Any) -> tuple[int, ...]:
    """The torch tensor shape of a flax leaf of `shape` (one layer)."""
    if key in _RAW.values():
        return tuple(shape)
    if key in ("x_embedder.proj.weight", "cond_embedder.proj.weight"):
        p = cfg.patch_size
        return (shape[1], shape[0] // (p * p), 1, p, p)
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def to_torch(key: str, value: np.ndarray, cfg: Any) -> np.ndarray:
    """One flax leaf (one layer) -> the torch tensor's values and layout."""
    p = cfg.patch_size
    if key in _RAW.values():
        return value
    if key in ("x_embedder.proj.weight", "cond_embedder.proj.weight"):  # (p*p*C, D) -> (D, C, 1, p, p)
        c = value.shape[0] // (p * p)
        return value.reshape(p, p, c, -1).transpose(3, 2, 0, 1)[:, :, None]
    if key == "proj_out.weight":  # (D, p*p*C) with (ph, pw, C) -> (C*p*p, D) with (C, ph, pw)
        d = value.shape[0]
        return value.reshape(d, p, p, -1).transpose(3, 1, 2, 0).reshape(-1, d)
    if key == "proj_out.bias":
        return value.reshape(p, p, -1).transpose(2, 0, 1).reshape(-1)
    if value.ndim == 4:  # Conv2d (kh, kw, I, O) -> (O, I, kh, kw)
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:  # Dense (in, out) -> Linear (out, in)
        return value.T
    return value


def to_flax(key: str, value: np.ndarray, cfg: Any) -> np.ndarray:
    """Inverse of `to_torch`."""
    p = cfg.patch_size
    if key in _RAW.values():
        return value
    if key in ("x_embedder.proj.weight", "cond_embedder.proj.weight"):  # (D, C, 1, p, p) -> (p*p*C, D)
        if value.ndim != 5 or value.shape[2] != 1:
            raise ValueError(f"{key}: expected a (D, C, 1, p, p) Conv3d weight, got shape {value.shape}")
        return value[:, :, 0].transpose(2, 3, 1, 0).reshape(-1, value.shape[0])
    if key == "proj_out.weight":
        d = value.shape[1]
        return value.reshape(-1, p, p, d).transpose(3, 1, 2, 0).reshape(d, -1)
    if key == "proj_out.bias":
        return value.reshape(-1, p, p).transpose(1, 2, 0).reshape(-1)
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        return value.T
    return value


def state_dict_from_params(params: Any, model_config: Any) -> dict[str, np.ndarray]:
    """In-memory params tree -> torch-layout float32 numpy state dict (small models, tests)."""
    import jax

    cfg = _Cfg(dict(model_config))
    out = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = tuple(k.key for k in key_path)
        value = np.asarray(jax.device_get(leaf), np.float32)
        for i, layer_path in enumerate(unstacked_paths(path, value.shape)):
            key = torch_key(layer_path)
            out[key] = np.ascontiguousarray(to_torch(key, value[i] if path[0] in STACKED else value, cfg))
    return out


# ---- reading a checkpoint leaf by leaf ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Leaf:
    path: tuple[str, ...]  # flax path inside the params tree
    shape: tuple[int, ...]


def checkpoint_leaves(step_dir: str, which: str) -> list[Leaf]:
    """The param leaves (path, shape) of a checkpoint's `params` or `ema_params`, from metadata only."""
    key = {"params": "params", "ema": "ema_params"}[which]
    meta = ckpt_lib._as_dict(
        ocp.StandardCheckpointer().metadata(os.path.join(step_dir, "state")).item_metadata
    )
    if key not in meta:
        raise ckpt_lib.CheckpointError(
            f"{step_dir}: the checkpoint has no {key} (it holds {sorted(meta)}); choose --weights "
            f"{'params' if which == 'ema' else 'ema'}"
        )
    out = []

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for k in sorted(node):
                walk(node[k], (*prefix, k))
        else:
            out.append(Leaf(prefix, tuple(node.shape)))

    walk(meta[key], ())
    return out


def read_leaves(step_dir: str, which: str, leaves: list[Leaf]) -> list[np.ndarray]:
    """Some param leaves as host numpy arrays (a partial restore: only those arrays are read)."""
    key = {"params": "params", "ema": "ema_params"}[which]
    item: dict = {}
    args: dict = {}
    for leaf in leaves:
        node, anode = item, args
        for name in leaf.path[:-1]:
            node, anode = node.setdefault(name, {}), anode.setdefault(name, {})
        node[leaf.path[-1]] = np.empty(leaf.shape, np.float32)  # structure only; never written
        anode[leaf.path[-1]] = ocp.RestoreArgs(restore_type=np.ndarray)
    restored = ocp.PyTreeCheckpointer().restore(
        os.path.join(step_dir, "state"),
        args=ocp.args.PyTreeRestore(item={key: item}, restore_args={key: args}, partial_restore=True),
    )
    out = []
    for leaf in leaves:
        node = restored[key]
        for name in leaf.path:
            node = node[name]
        out.append(np.asarray(node))
    return out


def read_groups(leaves: list[Leaf], read_bytes: int) -> list[list[Leaf]]:
    """Consecutive leaves grouped up to `read_bytes` (float32) per restore call; 0: one leaf per call.

    orbax parses the whole tree's metadata on every restore, so a few hundred MB per call keeps large
    exports fast while host memory stays bounded by one group (or one leaf, when larger).
    """
    groups: list[list[Leaf]] = []
    size = 0
    for leaf in leaves:
        nbytes = 4 * int(np.prod(leaf.shape))
        if not groups or read_bytes <= 0 or size + nbytes > read_bytes:
            groups.append([])
            size = 0
        groups[-1].append(leaf)
        size += nbytes
    return groups


# ---- streaming safetensors writer -------------------------------------------------------------------


@dataclasses.dataclass
class Planned:
    key: str
    shape: tuple[int, ...]
    nbytes: int


def plan_shards(tensors: list[Planned], max_shard_bytes: int) -> list[list[Planned]]:
    """Greedy shards in order; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[Planned]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def safetensors_header(tensors: list[Planned], dtype_name: str) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.key] = {
            "dtype": dtype_name,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # 8-byte aligned data section
    return len(raw).to_bytes(8, "little") + raw


def parse_size(text: str) -> int:
    """'5GB', '200MB', '10KB' or a byte count -> bytes (decimal units, as transformers)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    if not m:
        raise ValueError(f"size {text!r}: use a byte count or a size like 500MB or 5GB")
    unit = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}[m.group(2)]
    return int(float(m.group(1)) * unit)


@dataclasses.dataclass
class ExportReport:
    step: int
    files: list[str]
    num_tensors: int
    total_bytes: int


def export_checkpoint(
    checkpoint: str,
    out_dir: str,
    model_config: Any,
    *,
    which: str = "ema",
    dtype: str = "fp32",
    max_shard_bytes: int = 5 * 10**9,
    read_bytes: int = 256 * 10**6,
    overwrite: bool = False,
) -> ExportReport:
    """Orbax checkpoint (workdir or step folder) -> `out_dir` with safetensors shard(s) and `config.json`.

    `model_config` is the run's `config.model` mapping (the DiT config); it is written as `config.json`.
    `read_bytes` bounds the leaves read per orbax call (see `read_groups`; 0: strictly leaf by leaf).
    """
    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r}: choose one of {sorted(DTYPES)}")
    np_dtype, st_dtype = DTYPES[dtype]
    step_dir = ckpt_lib._resolve_step_dir(checkpoint)
    cfg = _Cfg(dict(model_config))
    out = Path(out_dir)
    existing = [p.name for p in out.glob("*.safetensors*")] + (
        [] if not (out / "config.json").exists() else ["config.json"]
    )
    if existing and not overwrite:
        raise FileExistsError(f"{out}: already holds {existing}; pass --overwrite or choose another folder")
    out.mkdir(parents=True, exist_ok=True)

    leaves = checkpoint_leaves(step_dir, which)
    itemsize = np.dtype(np_dtype).itemsize
    planned, sources = [], []
    for leaf in leaves:
        for i, path in enumerate(unstacked_paths(leaf.path, leaf.shape)):
            layer_shape = leaf.shape[1:] if leaf.path[0] in STACKED else leaf.shape
            key = torch_key(path)
            shape = torch_shape(key, layer_shape, cfg)
            planned.append(Planned(key, shape, int(np.prod(shape)) * itemsize))
            sources.append((leaf, i if leaf.path[0] in STACKED else None))
    shards = plan_shards(planned, max_shard_bytes)
    names = (
        [WEIGHTS_NAME]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )

    values = _values_in_order(step_dir, which, sources, read_bytes)
    for name, shard in zip(names, shards, strict=True):
        _write_shard(out / name, shard, st_dtype, np_dtype, values, cfg)
    total = sum(t.nbytes for t in planned)
    if len(shards) > 1:
        weight_map = {t.key: name for name, shard in zip(names, shards, strict=True) for t in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    config = {"_class_name": "OmniHumanDiTTorch", "exported_step": int(os.path.basename(step_dir))}
    config.update(_jsonable(dict(model_config)))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return ExportReport(int(os.path.basename(step_dir)), names, len(planned), total)


def _values_in_order(
    step_dir: str, which: str, sources: list[tuple[Leaf, int | None]], read_bytes: int
) -> Iterator[np.ndarray]:
    """Each planned tensor's flax value in plan order; one read group of leaves in memory at a time."""
    leaves = list(dict.fromkeys(leaf for leaf, _ in sources))
    position = 0
    for group in read_groups(leaves, read_bytes):
        values = dict(zip(group, read_leaves(step_dir, which, group), strict=True))
        while position < len(sources) and sources[position][0] in values:
            leaf, layer = sources[position]
            yield values[leaf] if layer is None else values[leaf][layer]
            position += 1
        del values


def _write_shard(path: Path, shard: list[Planned], st_dtype: str, np_dtype, values: Iterator, cfg) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(safetensors_header(shard, st_dtype))
        for t in shard:
            arr = np.ascontiguousarray(to_torch(t.key, next(values), cfg).astype(np_dtype))
            if tuple(arr.shape) != t.shape:
                raise ValueError(f"{t.key}: converted shape {arr.shape} differs from the planned {t.shape}")
            f.write(arr.tobytes())
    tmp.replace(path)


class _Cfg:
    """Attribute access to a model-config mapping (only `patch_size` is needed by the layouts)."""

    def __init__(self, values: dict):
        self.__dict__.update(values)


def _jsonable(values: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
