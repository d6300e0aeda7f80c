"""Start-up validation of a run's config: every bad value fails with the key's name.

Also applies Principle 2 of OmniHuman-1 (section 3.3): the stronger the condition, the lower its training
ratio. A ratio order that breaks it (text >= reference >= audio >= pose) is reported as a warning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omnihuman_jax.conditions import CONDITIONS
from omnihuman_jax.models.dit import DiTConfig
from omnihuman_jax.sharding import MESH_AXES
from omnihuman_jax.train_state import parse_lr_multipliers

MOTION_ORDER = ("text", "reference", "audio", "pose")  # weakest to strongest motion condition


class ConfigError(ValueError):
    pass


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config.{key}: {message}")


def principle2_warnings(ratios: Any) -> list[str]:
    """Warnings for each pair where a stronger condition trains more often than a weaker one.

    Order text > reference > audio > pose (weak to strong); a ratio of 0 means the stage does not train
    that condition and is not flagged.
    """
    warnings: list[str] = []
    for i, weak in enumerate(MOTION_ORDER):
        for strong in MOTION_ORDER[i + 1 :]:
            r_weak, r_strong = float(ratios[weak]), float(ratios[strong])
            if r_strong > 0 and r_strong > r_weak:
                warnings.append(
                    f"Principle 2: {strong} ratio {r_strong:g} exceeds the weaker {weak} ratio {r_weak:g}; "
                    f"the model will lean on {strong} and {weak} will learn poorly (OmniHuman-1, section 3.3)"
                )
    return warnings


def validate_config(config: Any) -> list[str]:
    """Raises ConfigError on a bad key or value; returns warnings."""
    try:
        DiTConfig.from_config(config.model).validate()
    except ValueError as e:
        raise ConfigError(f"config.{e}" if str(e).startswith("model.") else str(e)) from e
    for name in CONDITIONS:
        _require(name in config.condition_ratios, f"condition_ratios.{name}", "missing")
        r = config.condition_ratios[name]
        _require(0.0 <= r <= 1.0, f"condition_ratios.{name}", f"{r} is not in [0, 1]")
    unknown = sorted(set(config.condition_ratios) - set(CONDITIONS))
    _require(not unknown, "condition_ratios", f"unknown conditions {unknown}; known: {list(CONDITIONS)}")
    _require(config.stage in (1, 2, 3), "stage", f"{config.stage} is not 1, 2 or 3")
    if config.stage == 1:
        for name in ("audio", "pose"):
            _require(
                config.condition_ratios[name] == 0.0,
                f"condition_ratios.{name}",
                "stage 1 trains text + reference only (Principle 1); set it to 0 or use stage 2/3",
            )
    if config.stage == 2:
        _require(
            config.condition_ratios.pose == 0.0, "condition_ratios.pose", "stage 2 drops pose; use stage 3"
        )
    _require(config.total_steps > 0, "total_steps", "must be positive")
    _require(config.batch_size > 0, "batch_size", "must be positive")
    k = config.optimizer.grad_accum_steps
    _require(
        k >= 1 and config.batch_size % k == 0,
        "optimizer.grad_accum_steps",
        f"{k} must be >= 1 and divide batch_size={config.batch_size}",
    )
    _require(
        set(config.mesh) == set(MESH_AXES), "mesh", f"axes must be {MESH_AXES}, got {sorted(config.mesh)}"
    )
    try:
        parse_lr_multipliers(config.optimizer.get("lr_multipliers", ""))
    except ValueError as e:
        raise ConfigError(f"config.optimizer.lr_multipliers: {e}") from e
    _require(config.checkpoint.every_steps > 0, "checkpoint.every_steps", "must be positive")
    _require(config.metrics.every_steps > 0, "metrics.every_steps", "must be positive")
    _require(config.flow.logit_std > 0, "flow.logit_std", "must be positive")
    _require(config.flow.shift > 0, "flow.shift", "must be positive")
    _require(config.flow.motion_weight >= 0, "flow.motion_weight", "must be >= 0 (0 turns it off)")
    _require(config.flow.motion_noise >= 0, "flow.motion_noise", "must be >= 0 (0 turns it off)")
    for name in ("lip_weight", "hand_weight"):
        _require(config.flow.get(name, 0.0) >= 0, f"flow.{name}", "must be >= 0 (0 turns it off)")
    s = config.shape
    p = config.model.patch_size
    _require(
        s.latent_height % p == 0 and s.latent_width % p == 0,
        "shape",
        f"latent height/width must be multiples of model.patch_size={p}",
    )
    _check_vae(config.get("vae", {}))
    return principle2_warnings(config.condition_ratios)


def _check_vae(vae: Any) -> None:
    """vae.spatial_compression_ratio is a power of two and, with vae.path set, the VAE folder's own."""
    r = int(vae.get("spatial_compression_ratio", 8))
    _require(r >= 1 and r & (r - 1) == 0, "vae.spatial_compression_ratio", f"{r} is not a power of 2")
    path = Path(str(vae.get("path", "") or "")) / "config.json"
    if not vae.get("path") or not path.is_file():
        return  # no VAE, or one the data path reports when it needs it
    got = int(json.loads(path.read_text()).get("spatial_compression_ratio", 8))
    _require(
        got == r,
        "vae.spatial_compression_ratio",
        f"{r}, but the VAE in vae.path={vae.path} compresses {got}x; set it to {got}",
    )
