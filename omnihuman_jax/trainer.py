"""The training loop: mesh, sharded state, restore-or-init, jitted steps, metrics, checkpoints, preemption.

It knows nothing of the CLI or of files beyond its workdir: `launch/train.py` passes the config and a
data-source factory (docs/design.md, Data source API). Reliability (docs/reliability.md): SIGTERM / SIGINT
or JAX's multi-host preemption sync point (`CheckpointManager.reached_preemption`) end the run after the
current step with a synchronous checkpoint of that step; the non-finite streak is checked every step,
one step behind the device so dispatch never stalls, and no checkpoint is written inside a streak; loss
spikes over `loss_spike_factor` times the running mean are reported.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omnihuman_jax import checkpointing as ckpt_lib
from omnihuman_jax import flops as flops_lib
from omnihuman_jax import sharding as shd
from omnihuman_jax.batch import sample_model_inputs, zeros_batch
from omnihuman_jax.config_checks import ConfigError, validate_config
from omnihuman_jax.flow_matching import resolution_shift
from omnihuman_jax.latent_encoding import make_batch_preprocessor
from omnihuman_jax.metrics import MetricWriter, bucket_losses, measure_matmul_peak
from omnihuman_jax.models.dit import DiTConfig, OmniHumanDiT
from omnihuman_jax.train_state import (
    abstract_state,
    init_train_state,
    lr_multiplier_tree,
    lr_schedule,
    make_optimizer,
)
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
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step.

    With several processes, SIGTERM is left to JAX's preemption service (a Python handler would replace
    its notifier) and the hosts agree on the stop step through `Checkpointer.reached_preemption`; SIGINT
    keeps its default there, since one host stopping alone would hang the others' collectives.
    A second SIGINT on a single host aborts at once (a save in flight stays uncommitted, never corrupt).
    """

    def __init__(self, single_process: bool):
        self.received: int | None = None
        self._signals = (signal.SIGTERM, signal.SIGINT) if single_process else ()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        for sig in self._signals:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, _frame) -> None:
        if self.received is None:
            self.received = signum
            print(
                f"received {signal.Signals(signum).name}: finishing the current step, then saving a "
                "checkpoint and stopping",
                flush=True,
            )
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt("second SIGINT: aborting without the final checkpoint")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def describe(self) -> str:
        return signal.Signals(self.received).name if self.received else "a preemption notice"


class _Health:
    """Host-side watch over each step's loss and non-finite streak.

    Raises NonFiniteError after `max_nonfinite` consecutive non-finite steps; counts a loss above
    `spike_factor` times the mean of the last `window` finite losses as a spike (once `window // 5`
    losses are known).
    """

    def __init__(self, max_nonfinite: int, spike_factor: float, window: int):
        self.max_nonfinite = max_nonfinite
        self.spike_factor = spike_factor
        self.history: collections.deque[float] = collections.deque(maxlen=max(window, 1))
        self.min_history = max(1, window // 5)
        self.streak = 0
        self.spikes_total = 0

    def observe(self, step: int, loss: float, streak: int) -> None:
        self.streak = streak
        if self.max_nonfinite and streak >= self.max_nonfinite:
            raise NonFiniteError(
                f"{streak} consecutive non-finite steps (loss or gradient) up to step {step}: stopping. "
                f"Params, EMA and optimizer state were not updated by those steps, and no checkpoint was "
                f"written during them, so the newest checkpoint is the last good state; check the data, "
                f"lower optimizer.lr, or raise max_nonfinite_steps."
            )
        if not math.isfinite(loss):
            return
        if self.spike_factor > 0 and len(self.history) >= self.min_history:
            mean = sum(self.history) / len(self.history)
            if mean > 0 and loss > self.spike_factor * mean:
                self.spikes_total += 1
                msg = (
                    f"loss spike at step {step}: loss {loss:.4g} is {loss / mean:.1f}x the running mean "
                    f"{mean:.4g} of the last {len(self.history)} steps "
                    f"(loss_spike_factor={self.spike_factor})"
                )
                log.warning(msg)
                print(f"warning: {msg}", flush=True)
        self.history.append(loss)

    @property
    def running_mean(self) -> float:
        return sum(self.history) / len(self.history) if self.history else float("nan")


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
        # The EMA starts at the loaded params in buffers of its own: the train step donates the state,
        # and one buffer cannot be donated twice.
        state = state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))
        print(
            f"initialised {len(names)} params from {config.checkpoint.init_from}; "
            f"{len(kept)} new params keep their init: {kept[:8]}{' ...' if len(kept) > 8 else ''}",
            flush=True,
        )
    return state, 0


def train(config: Any, workdir: str, make_source: SourceFactory) -> TrainResult:
    """Trains to `config.total_steps`, resuming from the newest complete checkpoint in `workdir`.

    Signal handlers are installed first, so SIGTERM / SIGINT during start-up also end the run cleanly.
    """
    with ckpt_lib.workdir_lock(workdir), _StopSignal(single_process=jax.process_count() == 1) as stop:
        return _train(config, workdir, make_source, stop)


def _train(config: Any, workdir: str, make_source: SourceFactory, stop: _StopSignal) -> TrainResult:
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
    try:  # a pattern that matches no parameter fails here, before any data is read
        lr_multiplier_tree(state.params, config.optimizer.get("lr_multipliers", ""))
    except ValueError as e:
        raise ConfigError(f"config.optimizer.lr_multipliers: {e}") from e
    pidx, pcount = jax.process_index(), jax.process_count()
    source = make_source(config, pidx, pcount)
    ckpt = ckpt_lib.Checkpointer(
        workdir, max_to_keep=config.checkpoint.max_to_keep, async_save=config.checkpoint.async_save
    )
    writer = MetricWriter(workdir, config.metrics.tensorboard, is_primary=pidx == 0)
    try:
        state, step = _restore_or_init(config, ckpt, state, shardings, source)
        writer.resume_at(step)
        if stop.received:
            print(f"received {stop.describe()} before the first step: stopped at step {step}", flush=True)
            return TrainResult(step, {}, preempted=True)
        step_fn = jit_train_step(
            make_train_step(model, optimizer, config, shift, lr_fn), shardings, example, mesh, rules
        )
        return _loop(config, state, step, step_fn, source, ckpt, writer, mesh, stop)
    finally:
        ckpt.close()
        writer.close()
        source.close()


def _health(config: Any) -> _Health:
    return _Health(
        max_nonfinite=int(config.get("max_nonfinite_steps", 0) or 0),
        spike_factor=float(config.get("loss_spike_factor", 0.0) or 0.0),
        window=int(config.get("loss_spike_window", 50) or 50),
    )


def _observe(health: _Health, step: int, metrics: dict[str, Any]) -> None:
    """Reads the two scalars the health watch needs (blocks until that step has run)."""
    loss, streak = jax.device_get((metrics["loss"], metrics["nonfinite_streak"]))
    health.observe(step, float(loss), int(streak))


def peak_flops_per_device(config) -> float:
    """The MFU denominator: the config's value, else a matmul peak measured in the compute dtype."""
    return float(config.metrics.peak_flops_per_device) or measure_matmul_peak(
        dtype=jnp.dtype(config.model.dtype)
    )


def _loop(config, state, step, step_fn, source, ckpt, writer, mesh, stop) -> TrainResult:
    peak = peak_flops_per_device(config)
    flops_per_step = flops_lib.train_flops_per_step(config, config.batch_size)
    tokens_per_step = flops_lib.tokens_per_sample(config) * config.batch_size
    meta = {"config": json.loads(config.to_json_best_effort())}
    preprocess = make_batch_preprocessor(config)
    profiler = _Profiler(config.profile_steps, ckpt.directory.rsplit("/", 1)[0])
    health = _health(config)
    last: dict[str, Any] = {}
    pending: tuple[int, Any] | None = None  # a dispatched step whose scalars are not yet read
    save_due, deferred_from = False, None
    t_last, steps_since = time.perf_counter(), 0
    while step < config.total_steps:
        batch = shd.shard_batch(preprocess(next(source)), mesh)
        profiler.before(step)
        state, metrics = step_fn(state, batch)
        step += 1
        profiler.after(step, metrics)
        steps_since += 1
        if pending is not None:  # the previous step, read while this one runs
            _observe(health, *pending)
        pending = (step, metrics)
        stopping = bool(stop.received) or ckpt.reached_preemption(step)  # every host, every step
        metric_step = step % config.metrics.every_steps == 0 or step == config.total_steps
        save_due = save_due or step % config.checkpoint.every_steps == 0 or step == config.total_steps
        if not (metric_step or save_due or stopping):
            continue
        _observe(health, *pending)
        pending = None
        if metric_step:
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
            last["loss_spikes_total"] = health.spikes_total
            writer.write(step, last)
        if (save_due or stopping) and health.streak == 0:
            ckpt.save(step, state, source.get_state(), {**meta, "step": step}, force=stopping)
            save_due, deferred_from = False, None
        elif save_due and deferred_from is None:
            deferred_from = step
            print(
                f"step {step} is inside a non-finite streak ({health.streak} steps): "
                f"checkpoint deferred to the next finite step",
                flush=True,
            )
        if stopping:
            ckpt.wait()
            saved = ckpt.latest_step()
            print(
                f"received {stop.describe()}: stopped after step {step}; the newest checkpoint is "
                f"step {saved}",
                flush=True,
            )
            return TrainResult(step, last, preempted=True)
    ckpt.wait()
    if deferred_from is not None:
        print(
            f"the run ended inside a non-finite streak: the newest checkpoint is step {ckpt.latest_step()}",
            flush=True,
        )
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
