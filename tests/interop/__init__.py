"""Tests of the PyTorch / diffusers interop (omnihuman_jax/interop)."""
