"""Multi-condition classifier-free guidance with CFG annealing (OmniHuman-1 section 3.4).

Condition sets per driving mode (masks in `omnihuman_jax.conditions.CONDITIONS` order: text, reference,
audio, pose, motion):
- `audio`: every condition except pose is active;
- `pose`: every condition is active except audio (pose-only driving);
- `combined`: every condition is active.
Guidance applies to text and audio only. With three branches (audio and combined modes)

    v = v_uncond + s_text(i) (v_text - v_uncond) + s_audio(i) (v_full - v_text)

where v_uncond drops text and audio, v_text drops audio only and v_full keeps both (the other conditions
stay as the mode sets them). In pose mode there is no audio, so two branches: v = v_uncond + s_text(i)
(v_full - v_uncond). With every scale 1 this is exactly v_full.

Pose guidance is an extension (the paper guides text and audio only): `guidance_mode("pose",
pose_guidance=True)` has three branches as audio mode has, with pose in the place of audio,

    v = v_uncond + s_text(i) (v_text - v_uncond) + s_pose(i) (v_full - v_text)

where v_uncond drops text and pose, v_text drops pose only and v_full keeps both; `GuidanceMode.guided`
names the condition the third scale guides.

All branches go through ONE forward pass: the inputs are concatenated along the batch axis (branch-major),
and with a mesh of several devices that axis is padded to a multiple of the mesh's `data` size and sharded
over it.

CFG annealing: over N steps i = 0 .. N - 1, with u = i / (N - 1) (u = 0 when N = 1), a scale s with start
value s0 and floor f' = min(f, s0) (a scale never rises) is

    constant: s(i) = s0
    linear:   s(i) = s0 + (f' - s0) u
    cosine:   s(i) = f' + (s0 - f') (1 + cos(pi u)) / 2

so linear and cosine start at s0 and reach the floor on the last step; cosine stays high longer early on
and flattens near the floor. E.g. s0 = 5, f = 1, N = 5: linear 5, 4, 3, 2, 1; cosine 5, 4.414, 3, 1.586, 1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from omnihuman_jax.conditions import CONDITIONS

CFG_SCHEDULES = ("constant", "linear", "cosine")
MODES = ("audio", "pose", "combined")


def cfg_schedule(kind: str, start: float, floor: float, num_steps: int) -> np.ndarray:
    """(num_steps,) float32 guidance scales, annealed as the module docstring documents."""
    if kind not in CFG_SCHEDULES:
        raise ValueError(f"cfg_schedule={kind!r}: choose one of {CFG_SCHEDULES}")
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}: need at least 1 step")
    floor = min(float(floor), float(start))
    u = np.arange(num_steps, dtype=np.float64) / max(num_steps - 1, 1)
    if kind == "constant":
        s = np.full(num_steps, float(start))
    elif kind == "linear":
        s = start + (floor - start) * u
    else:
        s = floor + (start - floor) * 0.5 * (1.0 + np.cos(math.pi * u))
    return s.astype(np.float32)


def _mask(**on: bool) -> tuple[bool, ...]:
    return tuple(bool(on.get(name, False)) for name in CONDITIONS)


@dataclasses.dataclass(frozen=True)
class GuidanceMode:
    """Condition masks of the guidance branches, in `combine` order (uncond first, full last)."""

    name: str
    branch_masks: tuple[tuple[bool, ...], ...]  # (K, 5)
    guided: str = "audio"  # the condition the second scale of a 3-branch mode guides ("" with 2 branches)

    @property
    def num_branches(self) -> int:
        return len(self.branch_masks)

    @property
    def full_mask(self) -> tuple[bool, ...]:
        return self.branch_masks[-1]


def guidance_mode(name: str, pose_guidance: bool = False) -> GuidanceMode:
    """The branches of a driving mode (see the module docstring); `pose_guidance` in pose mode only."""
    if pose_guidance and name != "pose":
        raise ValueError(f"pose guidance applies to the pose mode only, not {name!r}")
    guided = "audio"  # what the second scale of the three-branch combination guides
    if name == "audio":
        base = dict(reference=True, motion=True)
        masks = (_mask(**base), _mask(text=True, **base), _mask(text=True, audio=True, **base))
    elif name == "combined":
        base = dict(reference=True, pose=True, motion=True)
        masks = (_mask(**base), _mask(text=True, **base), _mask(text=True, audio=True, **base))
    elif name == "pose" and pose_guidance:
        base = dict(reference=True, motion=True)
        masks = (_mask(**base), _mask(text=True, **base), _mask(text=True, pose=True, **base))
        guided = "pose"
    elif name == "pose":
        base = dict(reference=True, pose=True, motion=True)
        masks, guided = (_mask(**base), _mask(text=True, **base)), ""
    else:
        raise ValueError(f"guidance mode {name!r}: choose one of {MODES}")
    return GuidanceMode(name, masks, guided)


def combine(branches: jax.Array, s_text: jax.Array, s_audio: jax.Array) -> jax.Array:
    """branches (K, B, ...) in `GuidanceMode` order -> guided velocity (B, ...).

    K = 3: v_u + s_text (v_text - v_u) + s_audio (v_full - v_text); K = 2: v_u + s_text (v_full - v_u).
    With pose guidance `s_audio` is the pose scale (`GuidanceMode.guided`).
    """
    if branches.shape[0] == 3:
        v_u, v_text, v_full = branches[0], branches[1], branches[2]
        return v_u + s_text * (v_text - v_u) + s_audio * (v_full - v_text)
    if branches.shape[0] == 2:
        return branches[0] + s_text * (branches[1] - branches[0])
    raise ValueError(f"combine needs 2 or 3 guidance branches, got {branches.shape[0]}")


def branch_inputs(inputs: dict[str, jax.Array], mode: GuidanceMode) -> dict[str, jax.Array]:
    """Model inputs (B, ...) -> (K B, ...): repeated per branch, each with its branch's condition mask."""
    b = inputs["noisy_latents"].shape[0]
    k = mode.num_branches
    out = {key: jnp.concatenate([v] * k, axis=0) for key, v in inputs.items() if key != "condition_mask"}
    masks = jnp.asarray(np.repeat(np.asarray(mode.branch_masks, bool), b, axis=0))  # (K B, 5)
    if "condition_mask" in inputs:  # a condition the caller switched off stays off in every branch
        masks = masks & jnp.concatenate([inputs["condition_mask"].astype(bool)] * k, axis=0)
    out["condition_mask"] = masks
    return out


def _pad_and_shard(tree: dict[str, jax.Array], mesh: Mesh | None) -> tuple[dict[str, jax.Array], int]:
    """Pads the batch axis to a multiple of the mesh's data size and shards it there. Returns (tree, n)."""
    n = next(iter(tree.values())).shape[0]
    if mesh is None or mesh.shape["data"] == 1:
        return tree, n
    d = mesh.shape["data"]
    pad = (-n) % d

    def place(x: jax.Array) -> jax.Array:
        if pad:
            x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)
        spec = PartitionSpec("data", *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return {key: place(v) for key, v in tree.items()}, n


def make_guided_velocity(
    model: nn.Module, mode: GuidanceMode, mesh: Mesh | None = None
) -> Callable[[Any, dict[str, jax.Array], jax.Array, jax.Array, jax.Array], jax.Array]:
    """A jitted `(params, inputs, t (B,), s_text (), s_audio ()) -> guided velocity (B, T, h, w, C)`.

    `inputs` are single-branch model inputs (noisy_latents, motion_latents, ref_latents, text_emb, ...);
    an optional `condition_mask` (B, 5) switches conditions off in every branch.
    """

    def guided(params, inputs, t, s_text, s_audio):
        batched = branch_inputs(inputs, mode)  # (K B, ...)
        batched["__t"] = jnp.concatenate([t] * mode.num_branches, axis=0)  # (K B,)
        batched, n = _pad_and_shard(batched, mesh)
        t_all = batched.pop("__t")
        v = model.apply({"params": params}, batched, t_all)[:n]  # (K B, T, h, w, C)
        v = v.reshape(mode.num_branches, -1, *v.shape[1:])  # (K, B, T, h, w, C)
        return combine(v, s_text, s_audio)

    return jax.jit(guided)


def branch_velocities(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    inputs: dict[str, jax.Array],
    t: jax.Array,
    mode: GuidanceMode,
) -> jax.Array:
    """(K, B, T, h, w, C): each branch by its own forward pass, `apply_fn({"params": params}, inputs, t)`.

    The unbatched path, for checks and the benchmark's baseline.
    """
    b = inputs["noisy_latents"].shape[0]
    out = []
    for mask in mode.branch_masks:
        cm = jnp.asarray(np.tile(np.asarray(mask, bool), (b, 1)))
        if "condition_mask" in inputs:
            cm = cm & inputs["condition_mask"].astype(bool)
        out.append(apply_fn({"params": params}, dict(inputs, condition_mask=cm), t))
    return jnp.stack(out)
