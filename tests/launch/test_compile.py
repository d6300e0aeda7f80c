"""AOT compile of the train step (launch/compile.py): local CPU devices always, a TPU topology with libtpu."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import jax
import pytest

from launch import compile as aot
from tests.model_fixtures import tiny_config


def _tiny(**overrides):
    return tiny_config(**{"batch_size": 8, "model.scan_layers": True, "model.remat": "full", **overrides})


def test_cpu_compile_reports_mesh_memory_and_flops_without_materialising_params():
    cfg = _tiny(**{"mesh.data": 2, "mesh.fsdp": 4})
    live_before = len(jax.live_arrays())
    fig = aot.compile_train_step(cfg, jax.devices("cpu"))
    assert fig["mesh"] == {"data": 2, "fsdp": 4, "context": 1, "tensor": 1}
    assert fig["remat"] == "full" and fig["num_devices"] == 8
    assert fig["argument_bytes"] > 0 and fig["total_bytes"] >= fig["argument_bytes"] - fig["alias_bytes"]
    assert fig["compiled_flops_per_device"] > 0
    # fsdp=4 shards params, Adam moments and EMA: per-device arguments are well under the full state.
    full_state_bytes = 4 * 4 * fig["num_params"]  # params, EMA, two moments in f32
    assert fig["argument_bytes"] < full_state_bytes
    assert len(jax.live_arrays()) <= live_before + 1, "compiling materialised arrays"
    text = aot.report(fig)
    assert "per-device memory" in text and "remat: full" in text


def test_mesh_that_does_not_fill_the_devices_fails_with_the_mesh():
    cfg = _tiny(**{"mesh.data": 3})
    with pytest.raises(ValueError, match="mesh"):
        aot.compile_train_step(cfg, jax.devices("cpu"))


@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (pip install -e .[tpu])"
)
def test_tpu_topology_compile_for_tiny_config():
    cmd = [
        sys.executable,
        "-m",
        "launch.compile",
        "--config=configs/stage1.py:tiny",
        "--topology=v5p:2x2x2",
        "--config.batch_size=8",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "per-device memory" in out.stdout and "8 x TPU v5" in out.stdout, out.stdout


def test_unknown_topology_without_libtpu_names_the_fix():
    if importlib.util.find_spec("libtpu") is not None:
        pytest.skip("libtpu is installed: the name would be looked up for real")
    with pytest.raises(SystemExit, match="pip install -e .\\[tpu\\]"):
        aot.topology_devices("v5p:2x2x2")


def test_help_explains_every_flag():
    out = subprocess.run(
        [sys.executable, "-m", "launch.compile", "--helpfull"], capture_output=True, text=True
    )
    for flag in ("--config", "--topology", "--num_slices", "--json_out", "--fit", "--remats", "--memory_gb"):
        assert flag in out.stdout, flag
