"""XLA:CPU flags the launchers add to XLA_FLAGS before JAX starts its backend.

`--xla_cpu_experimental_ynn_fusion_type=` turns off XLA:CPU's YNNPACK fusions, which jax 0.10 enables by
default. On the toy VAE's training step they made the step slower (benchmarks/vae_step_cpu.py and
docs/performance.md give the measured ratio); the DiT's step is unchanged. The flags only concern the CPU
backend, so GPU and TPU runs ignore them.

XLA reads XLA_FLAGS once, when the first backend starts, so `apply()` runs in each entry point's
`__main__` block, before anything starts JAX. A flag the user already put in XLA_FLAGS wins, and
OMNIHUMAN_XLA_DEFAULTS=0 leaves XLA_FLAGS untouched. XLA aborts at start on a flag it does not know, and
experimental flags come and go, so the flags are added only under the jaxlib releases they were measured
with (`MEASURED_JAXLIB`). Under another jaxlib, re-measure with `benchmarks/vae_step_cpu.py` before
widening it.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import MutableMapping

CPU_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="
OPT_OUT = "OMNIHUMAN_XLA_DEFAULTS"
MEASURED_JAXLIB = ("0.10.",)  # version prefixes whose XLA has the flags (docs/performance.md)


def with_cpu_flags(xla_flags: str) -> str:
    """`xla_flags` plus each of CPU_XLA_FLAGS whose name it does not already set."""
    flags = xla_flags.split()
    names = {f.split("=", 1)[0] for f in flags}
    flags += [f for f in CPU_XLA_FLAGS.split() if f.split("=", 1)[0] not in names]
    return " ".join(flags)


def installed_jaxlib() -> str:
    """The installed jaxlib's version, '' when there is none."""
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ""


def apply(environ: MutableMapping[str, str] = os.environ, jaxlib: str | None = None) -> str:
    """Adds CPU_XLA_FLAGS to environ['XLA_FLAGS'] unless opted out or under an unmeasured jaxlib.

    Returns the resulting XLA_FLAGS. `jaxlib` defaults to the installed version.
    """
    jaxlib = installed_jaxlib() if jaxlib is None else jaxlib
    if environ.get(OPT_OUT, "1") != "0" and jaxlib.startswith(MEASURED_JAXLIB):
        environ["XLA_FLAGS"] = with_cpu_flags(environ.get("XLA_FLAGS", ""))
    return environ.get("XLA_FLAGS", "")
