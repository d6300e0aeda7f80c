"""Checkpoints with orbax's CheckpointManager: train state, data-iterator state and run metadata.

Saves are asynchronous every N steps and keep the last K; orbax commits each step atomically (a temporary
folder renamed when complete), so a crash mid-save leaves the previous complete step intact. Restore goes
onto abstract arrays that carry the current mesh's shardings, which reshards a checkpoint written on any
other mesh. A later training stage can initialise from an earlier stage's params where names and shapes
match; new condition modules keep their zero-init.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
    def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = checkpoint_dir(workdir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self, step: int, state: Any, data_state: dict | None, meta: dict, *, force: bool = False
    ) -> bool:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            meta=ocp.args.JsonSave(meta),
        )
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        )
        try:
            out = self.manager.restore(step, args=args)
        except Exception as e:  # orbax raises many types for damaged files
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} could not be restored: {e}"
            ) from e
        return out.state, dict(out.data or {}), dict(out.meta or {})

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict, dict] | None:
        """Newest restorable step, falling back to older ones when the newest is damaged."""
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, data, meta = self.restore(step, abstract_state)
                return step, state, data, meta
            except CheckpointError as e:
                log.error("%s; falling back to the previous step", e)
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class CheckpointError(RuntimeError):
    pass


def restore_params_only(path: str, abstract_params: Any) -> tuple[Any, list[str], list[str]]:
    """Params from another run's workdir or checkpoint step folder, for stage-to-stage initialisation.

    Returns (params, loaded_names, kept_names): a param loads when its path and shape match; the others
    keep their fresh (zero-initialised for the new condition modules) values.
    """
    step_dir = _resolve_step_dir(path)
    ckptr = ocp.StandardCheckpointer()
    stored = ckptr.metadata(os.path.join(step_dir, "state")).item_metadata
    stored_params = _params_tree(stored)
    flat_new = _flatten(abstract_params)
    flat_old = _flatten(stored_params)
    matching = {
        k for k, v in flat_new.items() if k in flat_old and tuple(flat_old[k].shape) == tuple(v.shape)
    }
    restored = ckptr.restore(os.path.join(step_dir, "state"))
    old_values = _flatten(_params_tree(restored))
    loaded = {k: old_values[k] for k in matching}
    return loaded, sorted(matching), sorted(set(flat_new) - matching)


def _as_dict(tree: Any) -> Any:
    """orbax tree metadata -> a plain dict tree."""
    return tree.tree if hasattr(tree, "tree") else tree


def _params_tree(tree: Any) -> Any:
    tree = _as_dict(tree)
    if isinstance(tree, dict):
        return tree["params"]
    return tree.params


def _resolve_step_dir(path: str) -> str:
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "state")):
        return path
    ckpt = checkpoint_dir(path) if os.path.isdir(checkpoint_dir(path)) else path
    if not os.path.isdir(ckpt):
        raise FileNotFoundError(f"checkpoint.init_from={path!r}: no such workdir or checkpoint folder")
    steps = sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())
    if not steps:
        raise FileNotFoundError(f"checkpoint.init_from={path!r}: no complete checkpoint in {ckpt}")
    return os.path.join(ckpt, str(steps[-1]))


def _flatten(tree: Any) -> dict[str, Any]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): v for p, v in flat}


def merge_params(fresh: Any, loaded: dict[str, np.ndarray]) -> Any:
    """Replaces leaves of `fresh` whose path is in `loaded`, keeping each leaf's sharding."""

    def pick(path, leaf):
        key = jax.tree_util.keystr(path)
        if key not in loaded:
            return leaf
        return jax.device_put(np.asarray(loaded[key], dtype=leaf.dtype), leaf.sharding)

    return jax.tree_util.tree_map_with_path(pick, fresh)


def load_run_config(path: str) -> dict:
    """The config dict a run saved with its checkpoint (its `meta` item), from a workdir or step folder."""
    import json

    step_dir = _resolve_step_dir(path)
    meta_dir = os.path.join(step_dir, "meta")
    files = [f for f in os.listdir(meta_dir)] if os.path.isdir(meta_dir) else []
    for name in files:
        with open(os.path.join(meta_dir, name)) as f:
            try:
                meta = json.load(f)
            except json.JSONDecodeError:
                continue
        if "config" in meta:
            return meta["config"]
    raise CheckpointError(f"{step_dir} has no saved run config (meta item); was it written by launch.train?")


def load_params(path: str, which: str = "ema") -> tuple[Any, int]:
    """Params (`which="params"`) or their EMA (`"ema"`) of the newest step in a workdir, or of a step folder.

    Returns (params as host numpy arrays, step). Only that subtree is read from disk.
    """
    if which not in ("params", "ema"):
        raise ValueError(f"which={which!r}: choose 'params' or 'ema'")
    step_dir = _resolve_step_dir(path)
    item = os.path.join(step_dir, "state")
    if not os.path.isdir(item):
        raise CheckpointError(f"{step_dir} holds no train state")
    ckptr = ocp.StandardCheckpointer()
    meta = _as_dict(ckptr.metadata(item).item_metadata)
    key = "params" if which == "params" else "ema_params"
    abstract = jax.tree.map(lambda m: np.empty(m.shape, m.dtype), meta[key])
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
    handler = ocp.PyTreeCheckpointer()
    restored = handler.restore(
        item,
        args=ocp.args.PyTreeRestore(
            item={key: abstract}, restore_args={key: restore_args}, partial_restore=True
        ),
    )
    return restored[key], int(os.path.basename(step_dir))
