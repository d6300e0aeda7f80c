"""Ahead-of-time compile of the train step for a named TPU topology, on a machine without TPUs.

  python -m launch.compile --config=configs/stage3.py:7b --topology=v5p:4x4x4 --config.mesh.fsdp=-1
  python -m launch.compile --config=configs/stage1.py:tiny --topology=cpu

Like MaxText's train_compile: the devices come from libtpu's topology description
(`jax.experimental.topologies.get_topology_desc`), the train state and the batch are ShapeDtypeStructs
carrying NamedShardings from the model's logical axis names (no parameter is ever materialised), and
`jax.jit(...).lower(...).compile()` runs XLA's TPU compiler. It prints the mesh, the remat policy, the
per-device memory from `compiled.memory_analysis()` and the compiled FLOPs from `cost_analysis()`; a
config that does not fit fails here instead of on the pod. `--topology=cpu` compiles for the local CPU
devices and needs no libtpu (`pip install -e .[tpu]` provides it); `--topology=local` compiles for the
devices of JAX's default backend (a GPU host's GPUs).

`--fit` asks the other question: the longest video that fits each device, per remat policy
(`launch/memory_fit.py`), by compiling the step at a few `shape.latent_frames` values.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this CLI's flags; called only when it runs as a program, so importing it (tests,
    other tools) never clashes with another CLI's flags of the same name."""
    config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. configs/stage3.py:7b.", lock_config=True
    )
    flags.DEFINE_string(
        "topology",
        "cpu",
        "'cpu' (the local CPU devices), 'local' (the devices of JAX's default backend, e.g. this host's "
        "GPUs) or a TPU topology name as libtpu knows it, e.g. v5p:2x2x2, v5e:4x4, v4:2x2x1. Its chip "
        "count must match the mesh in the config (one -1 axis fills it).",
    )
    flags.DEFINE_bool(
        "fit",
        False,
        "Instead of one compile: find, for each policy in --remats, the largest shape.latent_frames whose "
        "per-device memory fits the budget (launch/memory_fit.py).",
    )
    flags.DEFINE_list(
        "remats", [], "With --fit: remat policies to try, e.g. none,save_dots,full (default: model.remat)."
    )
    flags.DEFINE_float(
        "memory_gb",
        0.0,
        "With --fit: per-device budget in GiB. 0: the limit the device reports (GPU, TPU); topology "
        "descriptions and CPUs report none, so give it there (a v5p chip has 95 GB of HBM).",
    )
    flags.DEFINE_integer("max_latent_frames", 256, "With --fit: the largest latent_frames to consider.")
    flags.DEFINE_integer("num_slices", 1, "TPU slices (multislice); the devices of all slices form the mesh.")
    flags.DEFINE_string("json_out", "", "Also write the printed figures as JSON to this file.")
    flags.mark_flags_as_required(["config"])


def topology_devices(topology: str, num_slices: int = 1) -> list:
    """Device descriptions of `topology` ('cpu' or a TPU name), without needing the hardware."""
    import jax

    if topology == "cpu":
        return list(jax.devices("cpu"))
    if topology == "local":
        return list(jax.devices())
    try:
        from jax.experimental import topologies

        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology, num_slices=num_slices)
    except Exception as e:  # noqa: BLE001 - libtpu missing or an unknown name: both say what to do
        raise SystemExit(
            f"--topology={topology!r}: no TPU topology description ({type(e).__name__}: {e}). Install the "
            f"TPU extra (pip install -e .[tpu]) and use a name like v5p:2x2x2, or --topology=cpu."
        ) from e
    return list(desc.devices)


def abstract_train_state(config: Any, devices: list) -> dict[str, Any]:
    """The mesh, the step function and ShapeDtypeStruct state/batch with shardings; nothing materialised."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from omnihuman_jax import flops as flops_lib
    from omnihuman_jax import sharding as shd
    from omnihuman_jax.batch import batch_shapes, sample_model_inputs
    from omnihuman_jax.flow_matching import resolution_shift
    from omnihuman_jax.models.dit import DiTConfig, OmniHumanDiT
    from omnihuman_jax.train_state import (
        TrainState,
        abstract_state,
        lr_schedule,
        make_optimizer,
        state_shardings,
    )
    from omnihuman_jax.train_step import make_train_step

    mesh = shd.make_mesh(dict(config.mesh), devices)
    if config.model.attention == "auto" and devices[0].platform == "tpu":
        config = config.copy_and_resolve_references()
        config.model.attention = "splash"  # `auto` resolves by the host's platform; the target is a TPU
    rules = config.sharding.logical_axis_rules
    rules_t = shd.rules_tuple(rules)
    model = OmniHumanDiT(DiTConfig.from_config(config.model))
    optimizer = make_optimizer(config.optimizer, config.total_steps)
    b = config.batch_size
    batch = {
        k: jax.ShapeDtypeStruct(shape, dtype, sharding=shd.batch_sharding(mesh, len(shape)))
        for k, (shape, dtype) in batch_shapes(config, b).items()
    }

    def boxed_params(rng, batch):
        return model.init(rng, sample_model_inputs(batch), jnp.zeros((b,)))["params"]

    def init_fn(rng, batch):
        params = nn.unbox(boxed_params(rng, batch))
        zero = jnp.zeros((), jnp.int32)
        return TrainState(zero, params, optimizer.init(params), params, zero, zero)

    rng = jax.random.key(0)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules_t):
        param_sh = shd.logical_to_sharding(jax.eval_shape(boxed_params, rng, batch), mesh, rules)
        abstract = jax.eval_shape(init_fn, rng, batch)
    shardings = state_shardings(abstract, param_sh, mesh)
    shift = resolution_shift(
        flops_lib.tokens_per_sample(config), config.flow.shift, config.flow.base_shift_tokens
    )
    step_fn = make_train_step(
        model, optimizer, config, shift, lr_schedule(config.optimizer, config.total_steps)
    )
    jitted = jax.jit(
        step_fn,
        in_shardings=(shardings, {k: v.sharding for k, v in batch.items()}),
        out_shardings=(shardings, shd.replicated(mesh)),
        donate_argnums=(0,),
    )
    return dict(
        mesh=mesh,
        rules=rules_t,
        jitted=jitted,
        state=abstract_state(abstract, shardings),
        batch=batch,
        num_params=sum(int(x.size) for x in jax.tree.leaves(abstract.params)),
        attention=config.model.attention,
    )


def compile_train_step(config: Any, devices: list) -> dict[str, Any]:
    """Lowers and compiles the step; returns the figures that `main` prints."""
    import flax.linen as nn
    import jax

    from omnihuman_jax import flops as flops_lib

    parts = abstract_train_state(config, devices)
    t0 = time.perf_counter()
    with jax.set_mesh(parts["mesh"]), nn.logical_axis_rules(parts["rules"]):
        lowered = parts["jitted"].lower(parts["state"], parts["batch"])
    compiled = lowered.compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    mesh = parts["mesh"]
    out = dict(
        platform=devices[0].platform,
        device_kind=getattr(devices[0], "device_kind", ""),
        num_devices=len(devices),
        mesh=dict(zip(mesh.axis_names, (int(s) for s in mesh.devices.shape), strict=True)),
        remat=config.model.remat,
        scan_layers=bool(config.model.scan_layers),
        attention=parts["attention"],
        num_params=parts["num_params"],
        compile_s=seconds,
        compiled_flops_per_device=float((cost or {}).get("flops", -1.0)),
        model_flops_per_step=float(flops_lib.train_flops_per_step(config, config.batch_size)),
    )
    if mem is not None:
        out.update(
            argument_bytes=int(mem.argument_size_in_bytes),
            output_bytes=int(mem.output_size_in_bytes),
            temp_bytes=int(mem.temp_size_in_bytes),
            alias_bytes=int(mem.alias_size_in_bytes),
            generated_code_bytes=int(mem.generated_code_size_in_bytes),
        )
        # Donated state aliases its outputs: count those bytes once.
        out["total_bytes"] = (
            out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
        )
    return out


def report(fig: dict[str, Any]) -> str:
    from launch.memory_fit import format_bytes

    lines = [
        f"compiled for {fig['num_devices']} x {fig['device_kind'] or fig['platform']} "
        f"in {fig['compile_s']:.1f} s",
        f"mesh: {fig['mesh']}  remat: {fig['remat']}  scan_layers: {fig['scan_layers']}  "
        f"attention: {fig['attention']}  params: {fig['num_params'] / 1e6:.1f}M",
    ]
    if "total_bytes" in fig:
        lines.append(
            "per-device memory: arguments {a}, temps {t}, outputs {o} (aliased {al}), total {tot}".format(
                a=format_bytes(fig["argument_bytes"]),
                t=format_bytes(fig["temp_bytes"]),
                o=format_bytes(fig["output_bytes"]),
                al=format_bytes(fig["alias_bytes"]),
                tot=format_bytes(fig["total_bytes"]),
            )
        )
    lines.append(
        f"compiled FLOPs per device per step: {fig['compiled_flops_per_device']:.4g}; "
        f"model FLOPs per step (all devices): {fig['model_flops_per_step']:.4g}"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    del argv
    from omnihuman_jax.config_checks import ConfigError, validate_config

    config = FLAGS.config
    try:
        for warning in validate_config(config):
            print(f"warning: {warning}", flush=True)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    devices = topology_devices(FLAGS.topology, FLAGS.num_slices)
    if FLAGS.fit:
        return fit_main(config, devices)
    try:
        fig = compile_train_step(config, devices)
    except ValueError as e:  # mesh / divisibility errors name the offending setting
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    fig["topology"] = FLAGS.topology
    print(report(fig), flush=True)
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(fig, f, indent=1)
    return 0


def fit_main(config: Any, devices: list) -> int:
    """--fit: the largest latent_frames per remat policy within the per-device budget."""
    from launch import memory_fit
    from omnihuman_jax.config_checks import ConfigError, validate_config

    for name, value, least in (
        ("memory_gb", FLAGS.memory_gb, 0),
        ("max_latent_frames", FLAGS.max_latent_frames, 1),
    ):
        if value < least:
            print(f"error: --{name}={value}: must be at least {least}", file=sys.stderr, flush=True)
            return 2
    budget = int(FLAGS.memory_gb * 2**30) or memory_fit.device_memory_budget(devices)
    if not budget:
        print(
            f"error: {devices[0].platform} devices report no memory limit; give the per-device budget "
            "with --memory_gb",
            file=sys.stderr,
            flush=True,
        )
        return 2
    remats = FLAGS.remats or [config.model.remat]
    print(f"budget {memory_fit.format_bytes(budget)} per device; compiling the step per size:", flush=True)
    for remat in remats:
        trial = config.copy_and_resolve_references()
        trial.model.remat = remat
        try:
            validate_config(trial)
        except ConfigError as e:
            print(f"error: --remats: {e}", file=sys.stderr, flush=True)
            return 2

    def save(rows: list[dict[str, Any]]) -> None:  # after each policy: a run cut short keeps its rows
        if FLAGS.json_out:
            with open(FLAGS.json_out, "w") as f:
                json.dump(dict(topology=FLAGS.topology, budget_bytes=budget, rows=rows), f, indent=1)

    try:
        rows = memory_fit.fit_policies(
            config,
            devices,
            remats,
            budget,
            FLAGS.max_latent_frames,
            compile_train_step,
            log=lambda line: print(line, flush=True),
            on_row=save,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(memory_fit.fit_report(rows, budget, FLAGS.max_latent_frames), flush=True)
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
