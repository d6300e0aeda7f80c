"""Device mesh and logical-axis sharding, the MaxText way: a named Mesh and logical-to-mesh rules.

Parameters carry logical axis names (`nn.with_logical_partitioning`), activations carry logical
constraints, and `config.sharding.logical_axis_rules` maps both onto the mesh axes (data, fsdp, context,
tensor). `context` shards the token sequence (`act_length`); see omnihuman_jax/context_parallel.py. A mesh
config without a `context` entry gets context = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "context", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves one -1 entry to fill the devices; checks the product."""
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    if shape.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {dict(sizes)}")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh {dict(sizes)} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if int(np.prod(shape)) != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, shape, strict=True))} needs {int(np.prod(shape))} devices, "
            f"have {num_devices}"
        )
    return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes, len(devices))
    try:
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, AssertionError, NotImplementedError):
        arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, MESH_AXES)


def rules_tuple(rules: Any) -> tuple[tuple[str, Any], ...]:
    """Config rules (lists or tuples, possibly nested) -> hashable tuples for flax."""
    out = []
    for name, axes in rules:
        if isinstance(axes, list | tuple):
            axes = tuple(axes)
        out.append((name, axes))
    return tuple(out)


def logical_to_sharding(tree: Any, mesh: Mesh, rules) -> Any:
    """A tree of boxed (logically partitioned) values -> a tree of NamedShardings."""
    specs = nn.get_partition_spec(tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules_tuple(rules))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local numpy batch -> global jax.Arrays sharded over the batch axes."""
    out = {}
    for k, v in batch.items():
        sharding = batch_sharding(mesh, np.ndim(v))
        out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(v))
    return out
