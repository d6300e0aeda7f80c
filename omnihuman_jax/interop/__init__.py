"""Converters between omnihuman-jax parameters and diffusers / PyTorch checkpoints (docs/design.md)."""

from omnihuman_jax.interop.diffusers_vae import load_vae, save_vae

__all__ = ["load_vae", "save_vae"]
