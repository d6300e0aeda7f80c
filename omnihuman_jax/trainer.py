"""The training loop: mesh, sharded state, restore-or-init, jitted steps, metrics, checkpoints, preemption.

It knows nothing of the CLI or of files beyond its workdir: `launch/train.py` passes the config and a
data-source factory (docs/design.md, Data source API).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from omnihuman_jax import checkpointing as ckpt_lib
from omnihuman_jax import flops as flops_lib
from omnihuman_jax import sharding as shd
from omnihuman_jax.batch import sample_model_inputs, zeros_batch
from omnihuman_jax.config_checks import validate_config
from omnihuman_jax.flow_matching import resolution_shift
from omnihuman_jax.latent_encoding import make_batch_preprocessor
from omnihuman_jax.metrics import MetricWriter, bucket_losses, measure_matmul_peak
from omnihuman_jax.models.dit import DiTConfig, OmniHumanDiT
from omnihuman_jax.train_state import abstract_state, init_train_state, lr_schedule, make_optimizer
from omnihuman_jax.train_step import jit_train_step, make_train_step

log = logging.getLogger(__name__)
SourceFactory = Callable[[Any, int, int], Any]


class NonFiniteError(RuntimeError):
    pass


@dataclasses.dataclass
class TrainResult:
    step: int
    last_metrics: dict[str, Any]
    preempted: bool = False


class _Profiler:
    """Writes a JAX profiler trace for steps START..END-1 (`config.profile_steps = "START:END"`)."""

    def __init__(self, spec: str, workdir: str):
        self.start = self.end = -1
        self.dir = f"{workdir}/profile"
        if spec:
            try:
                self.start, self.end = (int(x) for x in spec.split(":"))
            except ValueError as e:
                raise ValueError(f"config.profile_steps={spec!r}: expected START:END, e.g. 5:8") from e
        self.active = False

    def before(self, step: int) -> None:
        if step == self.start and not self.active:
            jax.profiler.start_trace(self.dir)
            self.active = True

    def after(self, step: int, metrics) -> None:
        if self.active and step >= self.end:
            jax.block_until_ready(metrics)
            jax.profiler.stop_trace()
            self.active = False
            print(f"profiler trace of steps {self.start}:{self.end} written to {self.dir}", flush=True)


class _StopSignal:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, _frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def build_model(config: Any) -> OmniHumanDiT:
    return OmniHumanDiT(DiTConfig.from_config(config.model))


def _restore_or_init(config, ckpt, state, shardings, source) -> tuple[Any, int]:
    restored = ckpt.restore_latest(abstract_state(state, shardings))
    if restored is not None:
        step, state, data_state, _ = restored
        if data_state:
            source.set_state(data_state)
        print(f"resumed from checkpoint step {step} in {ckpt.directory}", flush=True)
        return state, step
    if config.checkpoint.init_from:
        loaded, names, kept = ckpt_lib.restore_params_only(config.checkpoint.init_from, state.params)
        params = ckpt_lib.merge_params(state.params, loaded)
        state = state.replace(params=params, ema_params=params)
        print(
            f"initialised {len(names)} params from {config.checkpoint.init_from}; "
            f"{len(kept)} new params keep their init: {kept[:8]}{' ...' if len(kept) > 8 else ''}",
            flush=True,
        )
    return state, 0


def train(config: Any, workdir: str, make_source: SourceFactory) -> TrainResult:
    for warning in validate_config(config):
        log.warning(warning)
        print(f"warning: {warning}", flush=True)
    mesh = shd.make_mesh(dict(config.mesh))
    rules = config.sharding.logical_axis_rules
    model = build_model(config)
    optimizer = make_optimizer(config.optimizer, config.total_steps)
    lr_fn = lr_schedule(config.optimizer, config.total_steps)
    shift = resolution_shift(
        flops_lib.tokens_per_sample(config), config.flow.shift, config.flow.base_shift_tokens
    )

    example = zeros_batch(config, config.batch_size)
    state, shardings = init_train_state(
        model, optimizer, sample_model_inputs(example), config.seed, mesh, rules
    )
    pidx, pcount = jax.process_index(), jax.process_count()
    source = make_source(config, pidx, pcount)
    ckpt = ckpt_lib.Checkpointer(
        workdir, max_to_keep=config.checkpoint.max_to_keep, async_save=config.checkpoint.async_save
    )
    writer = MetricWriter(workdir, config.metrics.tensorboard, is_primary=pidx == 0)
    try:
        state, step = _restore_or_init(config, ckpt, state, shardings, source)
        step_fn = jit_train_step(
            make_train_step(model, optimizer, config, shift, lr_fn), shardings, example, mesh, rules
        )
        return _loop(config, state, step, step_fn, source, ckpt, writer, mesh)
    finally:
        ckpt.close()
        writer.close()
        source.close()


def _loop(config, state, step, step_fn, source, ckpt, writer, mesh) -> TrainResult:
    peak = config.metrics.peak_flops_per_device or measure_matmul_peak()
    flops_per_step = flops_lib.train_flops_per_step(config, config.batch_size)
    tokens_per_step = flops_lib.tokens_per_sample(config) * config.batch_size
    meta = {"config": json.loads(config.to_json_best_effort())}
    preprocess = make_batch_preprocessor(config)
    profiler = _Profiler(config.profile_steps, ckpt.directory.rsplit("/", 1)[0])
    last: dict[str, Any] = {}
    t_last, steps_since = time.perf_counter(), 0
    with _StopSignal() as stop:
        while step < config.total_steps:
            batch = shd.shard_batch(preprocess(next(source)), mesh)
            profiler.before(step)
            state, metrics = step_fn(state, batch)
            step += 1
            profiler.after(step, metrics)
            steps_since += 1
            if step % config.metrics.every_steps == 0 or step == config.total_steps:
                metrics = jax.device_get(metrics)
                now = time.perf_counter()
                step_time = (now - t_last) / steps_since
                t_last, steps_since = now, 0
                last = _scalars(
                    metrics,
                    step_time,
                    config.batch_size,
                    tokens_per_step,
                    flops_per_step,
                    peak * jax.device_count(),
                    source,
                )
                writer.write(step, last)
                _check_nonfinite(config, metrics, step)
            if step % config.checkpoint.every_steps == 0 or step == config.total_steps or stop.received:
                ckpt.save(step, state, source.get_state(), {**meta, "step": step}, force=bool(stop.received))
            if stop.received:
                ckpt.wait()
                print(
                    f"received signal {stop.received}: saved checkpoint at step {step} and stopped",
                    flush=True,
                )
                return TrainResult(step, last, preempted=True)
    ckpt.wait()
    return TrainResult(step, last)


def _scalars(metrics, step_time, batch_size, tokens, flops, peak_total, source) -> dict[str, Any]:
    out = {
        "loss": float(metrics["loss"]),
        "grad_norm": float(metrics["grad_norm"]),
        "lr": float(metrics["lr"]),
        "step_time_s": step_time,
        "examples_per_s": batch_size / step_time,
        "tokens_per_s": tokens / step_time,
        "mfu": flops / step_time / peak_total,
        "nonfinite_total": int(metrics["nonfinite_total"]),
    }
    out.update(
        bucket_losses(np.asarray(metrics["loss_bucket_sum"]), np.asarray(metrics["loss_bucket_count"]))
    )
    skipped = getattr(source, "skipped_records", None)
    if skipped is not None:
        out["skipped_records"] = int(skipped)
    return out


def _check_nonfinite(config, metrics, step) -> None:
    limit = int(config.get("max_nonfinite_steps", 0) or 0)
    streak = int(metrics["nonfinite_streak"])
    if limit and streak >= limit:
        raise NonFiniteError(
            f"{streak} consecutive non-finite steps (loss or gradient) up to step {step}: stopping. "
            f"Params were not updated by those steps and the last checkpoint is intact; check the data "
            f"and lower optimizer.lr, or raise max_nonfinite_steps."
        )
