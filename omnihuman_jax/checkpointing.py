"""Checkpoints with orbax's CheckpointManager: train state, data-iterator state and run metadata.

Saves are asynchronous every N steps and keep the last K; orbax commits each step atomically (a temporary
folder renamed when complete), so a crash mid-save leaves the previous complete step intact. Temporary
folders left by a killed save are removed, with a log line, when the next run opens the folder. Restore
goes onto abstract arrays that carry the current mesh's shardings, which reshards a checkpoint written
on any other mesh. A step that fails to restore (a truncated or damaged file) is moved aside, never
deleted, and the previous step is used; a step written by another model config is an error, not damage.
A later training stage can initialise from an earlier stage's params where names and shapes match; new
condition modules keep their zero-init. One training job at a time holds a workdir (`workdir_lock`): a
second job started on it by mistake would write the same step folders and break both runs' saves.
Design: orbax's CheckpointManager and preemption sync point.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


LOCK_NAME = ".train.lock"  # flock'ed by the job that trains in a workdir; the OS drops it when the job dies
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's marker of a step folder whose save never committed
DAMAGED_PREFIX = "damaged_step_"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


class CheckpointError(RuntimeError):
    pass


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
    """Holds an exclusive lock on WORKDIR/.train.lock for one training job (its primary process).

    A second job on the same workdir fails at once with CheckpointError naming the holder. The lock is an
    flock, so a killed job leaves no stale lock behind. Other processes of a multi-host job share the
    primary's workdir and take no lock.
    """
    if not _is_primary():
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    f = open(path, "a+")  # held open, and locked, for the whole job
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "a process that did not say"
        f.close()
        raise CheckpointError(
            f"{os.path.abspath(workdir)} is in use by another training job ({holder}); two jobs writing one "
            "checkpoint folder break each other's saves: wait for it to finish, stop it, or pick another "
            "--workdir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def incomplete_saves(directory: str) -> list[str]:
    """Names of step folders a killed save left behind (orbax temporary folders)."""
    if not os.path.isdir(directory):
        return []
    return sorted(name for name in os.listdir(directory) if TMP_SUFFIX in name)


def _short(e: Exception, limit: int = 400) -> str:
    text = str(e).split(" [tensorstore_spec", 1)[0]
    return text if len(text) <= limit else text[:limit] + " ..."


def _is_primary() -> bool:
    return jax.process_index() == 0


def _sync(tag: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(tag)


class Checkpointer:
    def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = checkpoint_dir(workdir)
        leftovers = incomplete_saves(self.directory)
        if leftovers and _is_primary():
            msg = f"removing {len(leftovers)} incomplete checkpoint save(s) in {self.directory}: {leftovers}"
            log.warning(msg)
            for name in leftovers:  # never committed, so never restorable: nothing complete is lost
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        _sync("checkpoint_cleanup")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def reached_preemption(self, step: int) -> bool:
        """True on every host at the step JAX's preemption service picked after a preemption notice."""
        return bool(self.manager.reached_preemption(step))

    def save(
        self, step: int, state: Any, data_state: dict | None, meta: dict, *, force: bool = False
    ) -> bool:
        """Starts saving `step` (asynchronously when enabled; orbax first waits for a save in flight)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            meta=ocp.args.JsonSave(meta),
        )
        return self.manager.save(step, args=args, force=force)

    def check_compatible(self, step: int, abstract_state: Any) -> None:
        """Raises CheckpointError when `step` holds differently named or shaped params (another config).

        Unreadable metadata is left to `restore`, which treats it as damage.
        """
        try:
            item = os.path.join(self.directory, str(step), "state")
            stored = ocp.StandardCheckpointer().metadata(item).item_metadata
        except Exception:  # damaged metadata: restore() reports it
            return
        try:
            old = _flatten_names(_params_tree(stored))
        except (KeyError, AttributeError, TypeError):  # unreadable metadata: restore() reports it
            return
        new = _flatten_names(_params_tree(abstract_state))
        missing, extra = sorted(set(new) - set(old)), sorted(set(old) - set(new))
        shapes = [
            f"{k}: {tuple(old[k].shape)} -> {tuple(new[k].shape)}"
            for k in sorted(set(old) & set(new))
            if hasattr(old[k], "shape") and tuple(old[k].shape) != tuple(new[k].shape)
        ]
        if missing or extra or shapes:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} was written by a different model or optimizer "
                f"config (missing {missing[:5]}, unexpected {extra[:5]}, shape changes {shapes[:5]}); "
                "resume with the config it was written with, or start a new workdir with "
                "checkpoint.init_from pointing here"
            )

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
                f"checkpoint step {step} in {self.directory} could not be restored (a truncated or "
                f"damaged file?): {type(e).__name__}: {_short(e)}"
            ) from e
        return out.state, dict(out.data or {}), dict(out.meta or {})

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict, dict] | None:
        """Newest restorable step, falling back to older ones when the newest is damaged.

        A damaged step is moved aside to `damaged_step_<N>` (kept for inspection) so the run can save
        that step number again. Returns None when there is no checkpoint; raises CheckpointError when
        there were checkpoints but none could be restored, or when they belong to another config.
        """
        steps = sorted(self.all_steps(), reverse=True)
        for step in steps:
            self.check_compatible(step, abstract_state)
            try:
                state, data, meta = self.restore(step, abstract_state)
                return step, state, data, meta
            except CheckpointError as e:
                aside = self._move_aside(step)
                msg = f"{e}; moved it to {aside} and falling back to the previous step"
                log.error(msg)
        if steps:
            raise CheckpointError(
                f"none of the checkpoint steps {steps} in {self.directory} could be restored; they were "
                f"moved aside as {DAMAGED_PREFIX}<step>; run again to start from scratch"
            )
        return None

    def _move_aside(self, step: int) -> str:
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(self.directory, f"{DAMAGED_PREFIX}{step}")
        n = 1
        while os.path.exists(dst):
            dst = os.path.join(self.directory, f"{DAMAGED_PREFIX}{step}.{n}")
            n += 1
        if _is_primary() and os.path.isdir(src):
            os.rename(src, dst)
        _sync(f"checkpoint_move_aside_{step}")
        self.manager.reload()
        return dst

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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


def _flatten_names(tree: Any) -> dict[str, Any]:
    """Leaves by a plain "a/b/0" path, the same for dicts, dataclasses and sequences."""

    def name(entry: Any) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                return str(getattr(entry, attr))
        return str(entry)

    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(e) for e in p): v for p, v in flat}


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
