"""XLA:CPU flags the launchers add to XLA_FLAGS before JAX starts its backend.

`--xla_cpu_experimental_ynn_fusion_type=` turns off XLA:CPU's YNNPACK fusions, which jax 0.10 enables by
default. On the toy VAE's training step they made the step slower (benchmarks/vae_step_cpu.py and
docs/performance.md give the measured ratio); the DiT's step is unchanged. The flags only concern the CPU
backend, so GPU and TPU runs ignore them.

XLA reads XLA_FLAGS once, when the first backend starts, so `apply()` runs first thing in each entry
point's main. A flag the user already put in XLA_FLAGS wins, and OMNIHUMAN_XLA_DEFAULTS=0 leaves
XLA_FLAGS untouched.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

CPU_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="
OPT_OUT = "OMNIHUMAN_XLA_DEFAULTS"


def with_cpu_flags(xla_flags: str) -> str:
    """`xla_flags` plus each of CPU_XLA_FLAGS whose name it does not already set."""
    flags = xla_flags.split()
    names = {f.split("=", 1)[0] for f in flags}
    flags += [f for f in CPU_XLA_FLAGS.split() if f.split("=", 1)[0] not in names]
    return " ".join(flags)


def apply(environ: MutableMapping[str, str] = os.environ) -> str:
    """Adds CPU_XLA_FLAGS to environ['XLA_FLAGS'] unless opted out; returns the resulting XLA_FLAGS."""
    if environ.get(OPT_OUT, "1") != "0":
        environ["XLA_FLAGS"] = with_cpu_flags(environ.get("XLA_FLAGS", ""))
    return environ.get("XLA_FLAGS", "")
