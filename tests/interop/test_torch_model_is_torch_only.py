"""The exported PyTorch model loads with torch and safetensors alone: importing it pulls in no jax."""

from __future__ import annotations

import subprocess
import sys


def test_torch_dit_import_does_not_load_jax_or_flax():
    code = (
        "import sys; import omnihuman_jax.interop.torch_dit; "
        "bad = [m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
