"""Converters between omnihuman-jax parameters and diffusers / PyTorch checkpoints (docs/design.md).

Imports are lazy: `omnihuman_jax.interop.torch_dit` (the PyTorch model) must load with torch and
safetensors alone, without pulling in jax through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["load_vae", "save_vae"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("omnihuman_jax.interop.diffusers_vae"), name)
    raise AttributeError(f"module 'omnihuman_jax.interop' has no attribute {name!r}")
