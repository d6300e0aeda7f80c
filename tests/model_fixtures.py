"""Shared test helpers: tiny configs, random batches and model inputs."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import stage3
from omnihuman_jax.batch import zeros_batch
from omnihuman_jax.conditions import model_inputs
from omnihuman_jax.models.dit import DiTConfig, OmniHumanDiT


def tiny_config(**overrides):
    cfg = stage3.get_config("tiny")
    for k, v in overrides.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return cfg


def random_batch(cfg, batch_size: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = zeros_batch(cfg, batch_size)
    for k, v in batch.items():
        if v.dtype == np.float32:
            batch[k] = rng.normal(size=v.shape).astype(np.float32)
    batch["pose_heatmaps"] = np.abs(batch["pose_heatmaps"])
    batch["text_mask"][:] = True
    batch["text_mask"][:, -2:] = False
    batch["condition_mask"][:] = True
    return batch


def inputs_from_batch(batch) -> dict[str, jnp.ndarray]:
    return model_inputs({k: jnp.asarray(v) for k, v in batch.items()}, jnp.asarray(batch["latents"]))


def build(cfg, **model_overrides):
    dc = DiTConfig.from_config(cfg.model, **model_overrides)
    return OmniHumanDiT(dc)


def randomize(params, seed: int = 1, scale: float = 0.2):
    """Every param random (zero-inits included), so every pathway has an effect."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, new)


def tiny_model_and_params(batch_size: int = 2):
    """The tiny model, a random batch and the model's fresh (zero-initialised condition paths) params."""
    cfg = tiny_config()
    model = build(cfg)
    batch = random_batch(cfg, batch_size)
    t = jnp.full((batch_size,), 0.5)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), inputs_from_batch(batch), t)["params"])
    return model, batch, params
