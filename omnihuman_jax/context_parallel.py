"""Context parallelism: the token sequence sharded over a `context` mesh axis (as in MaxText's
context-parallel attention and the all-gather variant of ring attention).

Activations carry `act_length`, which the rules map to the `context` mesh axis, so every device holds a
slice of the joint (video, reference, text) sequence for the pointwise layers. Attention needs every key:
under `jax.shard_map` each device keeps its query slice, all-gathers keys, values and the key mask over
`context`, and runs the single-device kernel (`omnihuman_jax.models.attention.local_attention`). The
sequence is padded to a multiple of the context size first; padded keys are masked out and padded query
rows dropped, so results equal the unsharded run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from omnihuman_jax.models.layers import pad_length

CONTEXT_AXIS = "context"
Kernel = Callable[[jax.Array, jax.Array, jax.Array, jax.Array | None], jax.Array]


def context_axis_size() -> int:
    """Size of the `context` axis of the mesh set with `jax.set_mesh` (1 without one or without the axis)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or CONTEXT_AXIS not in mesh.axis_names:
        return 1
    return int(mesh.shape[CONTEXT_AXIS])


def mesh_is_set() -> bool:
    """Whether a mesh is set with `jax.set_mesh` (kernels that need shard_map check this)."""
    return not jax.sharding.get_abstract_mesh().empty


def _mesh_axes(logical: str, default, mesh_axes: tuple[str, ...]):
    """Mesh axes of one logical activation axis under the current flax rules (context excluded)."""
    try:
        (axes,) = nn.logical_to_mesh_axes((logical,))
    except (ValueError, TypeError):
        axes = default
    if axes is None:
        return None
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    kept = tuple(a for a in axes if a in mesh_axes and a != CONTEXT_AXIS)
    return kept or None


def attention_specs() -> tuple[P, P]:
    """(q/k/v spec (B, S, H, D), key-mask spec (B, S)) for the shard_map over the current mesh."""
    names = tuple(jax.sharding.get_abstract_mesh().axis_names)
    batch = _mesh_axes("act_batch", ("data", "fsdp"), names)
    heads = _mesh_axes("act_heads", "tensor", names)
    length = CONTEXT_AXIS if CONTEXT_AXIS in names else None
    return P(batch, length, heads, None), P(batch, length)


def context_parallel_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, kernel: Kernel
) -> jax.Array:
    """q (B, Sq, H, D), k/v (B, Sk, H, D), key_mask (B, Sk) -> (B, Sq, H, D), sharded over `context`."""
    n = context_axis_size()
    gather = n > 1
    b, sq = q.shape[:2]
    if key_mask is None:
        key_mask = jnp.ones((b, k.shape[1]), bool)
    qkv_spec, mask_spec = attention_specs()
    rows = _axes_size(qkv_spec[0])  # batch rows must split evenly over the batch's mesh axes
    qp = pad_length(pad_length(q, n), rows, axis=0)
    kp, vp = (pad_length(pad_length(x, n), rows, axis=0) for x in (k, v))
    mp = pad_length(pad_length(key_mask, n, value=False), rows, axis=0, value=False)

    def local(q_blk, k_blk, v_blk, m_blk):
        # (B/dp, S/n, H/tp, D) queries; keys, values and mask gathered over the whole sequence.
        if not gather:  # context size 1: only batch / heads are split (e.g. a Pallas kernel)
            return kernel(q_blk, k_blk, v_blk, m_blk)
        k_all = jax.lax.all_gather(k_blk, CONTEXT_AXIS, axis=1, tiled=True)
        v_all = jax.lax.all_gather(v_blk, CONTEXT_AXIS, axis=1, tiled=True)
        m_all = jax.lax.all_gather(m_blk, CONTEXT_AXIS, axis=1, tiled=True)
        return kernel(q_blk, k_all, v_all, m_all)

    out = jax.shard_map(
        local,
        in_specs=(qkv_spec, qkv_spec, qkv_spec, mask_spec),
        out_specs=qkv_spec,
        check_vma=False,
    )(qp, kp, vp, mp)
    return out[:b, :sq]


def _axes_size(axes: str | tuple[str, ...] | None) -> int:
    """Devices along the mesh axes of one PartitionSpec entry (1 when unsharded)."""
    if axes is None:
        return 1
    shape = jax.sharding.get_abstract_mesh().shape
    return math.prod(int(shape[a]) for a in ((axes,) if isinstance(axes, str) else axes))
