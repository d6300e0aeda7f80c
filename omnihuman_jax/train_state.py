"""Train state, optimiser and sharded initialisation.

optax AdamW with linear warmup then cosine decay and global-norm clipping; an EMA of the parameters;
fp32 master parameters; optional per-parameter learning-rate multipliers (`optimizer.lr_multipliers`),
as fine-tuning recipes give modules that are new to a pretrained base (OmniHuman's audio and pose
modules, zero-initialised on top of the earlier stage) a higher rate than the base.
The state is initialised under `jax.jit` with out_shardings taken from the parameters' logical axis
names, so no device ever holds an unsharded copy.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from omnihuman_jax import sharding as shd


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # () int32
    params: Any
    opt_state: Any
    ema_params: Any
    nonfinite_streak: jax.Array  # () int32: consecutive skipped (non-finite) steps
    nonfinite_total: jax.Array  # () int32


def lr_schedule(opt_cfg: Any, total_steps: int) -> optax.Schedule:
    decay = opt_cfg.decay_steps or max(total_steps, opt_cfg.warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt_cfg.lr,
        warmup_steps=opt_cfg.warmup_steps,
        decay_steps=decay,
        end_value=opt_cfg.lr * opt_cfg.end_lr_factor,
    )


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices and convolution kernels only, not on biases and norm scales."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """`optax.clip_by_global_norm`, which also takes the global norm the caller already has (`grad_norm=`).

    The train steps compute the gradient's norm outside their NaN guard's `lax.cond` (for the guard and the
    metric), and XLA shares no computation across a cond, so optax's clipping inside it read every
    gradient a second time for the same number. Given the norm, the clipping is the same select as
    optax's; its state is the same empty state, so checkpoints do not change.
    """
    inner = optax.clip_by_global_norm(max_norm)

    def update(updates, state, params=None, *, grad_norm: jax.Array | None = None, **extra_args):
        del extra_args
        if grad_norm is None:
            return inner.update(updates, state, params)
        keep = grad_norm < max_norm
        return jax.tree.map(
            lambda t: jax.lax.select(keep, t, (t / grad_norm.astype(t.dtype)) * max_norm), updates
        ), state

    return optax.GradientTransformationExtraArgs(inner.init, update)


def make_optimizer(
    opt_cfg: Any, total_steps: int, schedule: optax.Schedule | None = None
) -> optax.GradientTransformationExtraArgs:
    """AdamW on `schedule` (default: `lr_schedule(opt_cfg, total_steps)`) after global-norm clipping.

    `update(grads, state, params, grad_norm=optax.tree.norm(grads))` skips the clipping's own norm pass.
    """
    return optax.chain(
        clip_by_global_norm(opt_cfg.grad_clip),
        optax.adamw(
            schedule or lr_schedule(opt_cfg, total_steps),
            b1=opt_cfg.b1,
            b2=opt_cfg.b2,
            eps=opt_cfg.eps,
            weight_decay=opt_cfg.weight_decay,
            mask=_decay_mask,
        ),
    )


def update_if_finite(finite: jax.Array, update: Any, old: Any) -> Any:
    """`update(None)` when `finite`, else `old` unchanged: the NaN guard of the DiT and VAE train steps.

    A `lax.cond`, not a per-leaf `jnp.where(finite, new, old)`: with the select, old params and optimizer
    moments have two readers, so XLA copied every donated state buffer before updating it in place (954
    copies and 144 MiB more temps in the small preset's step, docs/performance.md). optax.apply_if_finite
    is not used: it wraps the optimizer only (the EMA would still move on a skipped step), checks the
    gradients but not the loss, and adds counters to the optimizer state, which changes the checkpoints.
    """
    return jax.lax.cond(finite, update, lambda _: old, None)


def parse_lr_multipliers(spec: str) -> list[tuple[str, float]]:
    """`"REGEX=MULT,REGEX=MULT"` -> [(REGEX, MULT), ...]; "" -> []. Raises ValueError on a bad entry."""
    rules = []
    for entry in filter(None, (e.strip() for e in str(spec or "").split(","))):
        pattern, sep, value = entry.rpartition("=")
        try:
            mult = float(value)
            re.compile(pattern)
        except (ValueError, re.error) as e:
            raise ValueError(f"{entry!r} is not REGEX=MULTIPLIER ({e})") from e
        if not sep or not pattern:
            raise ValueError(f"{entry!r} is not REGEX=MULTIPLIER (for example audio_=10)")
        if not mult > 0:
            raise ValueError(f"{entry!r}: the multiplier must be positive")
        rules.append((pattern, mult))
    return rules


def param_path(path: tuple) -> str:
    """A tree path as 'a/b/c', the form `lr_multipliers` patterns are searched in."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def lr_multiplier_tree(params: Any, spec: str) -> Any | None:
    """A pytree of floats like `params`: the first rule whose regex is found in a parameter's path gives its
    multiplier, 1 otherwise. None when `spec` is empty. A rule that matches no parameter raises ValueError
    (a typo would otherwise train at the base rate unnoticed)."""
    rules = parse_lr_multipliers(spec)
    if not rules:
        return None
    paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for pattern, _ in rules:
        if not any(re.search(pattern, p) for p in paths):
            raise ValueError(f"{pattern!r} matches no parameter path (paths look like {paths[0]!r})")

    def mult(path, _):
        name = param_path(path)
        return next((m for pattern, m in rules if re.search(pattern, name)), 1.0)

    return jax.tree_util.tree_map_with_path(mult, params)


def init_train_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    sample_inputs: dict[str, Any],
    seed: int,
    mesh: Mesh,
    rules,
) -> tuple[TrainState, TrainState]:
    """Returns (state, state_shardings). Params are created directly in their mesh sharding."""
    batch = sample_inputs["noisy_latents"].shape[0]

    def boxed_params(rng):
        return model.init(rng, sample_inputs, jnp.zeros((batch,)))["params"]

    def init_fn(rng):
        params = nn.unbox(boxed_params(rng))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            ema_params=params,
            nonfinite_streak=jnp.zeros((), jnp.int32),
            nonfinite_total=jnp.zeros((), jnp.int32),
        )

    rng = jax.random.key(seed)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.rules_tuple(rules)):
        param_sh = shd.logical_to_sharding(jax.eval_shape(boxed_params, rng), mesh, rules)
        shardings = state_shardings(jax.eval_shape(init_fn, rng), param_sh, mesh)
        state = jax.jit(init_fn, out_shardings=shardings)(rng)
    return state, shardings


def param_shardings(model: nn.Module, sample_inputs: dict[str, Any], mesh: Mesh, rules) -> Any:
    """Param shardings from the model's logical axis names, without materialising params."""
    batch = sample_inputs["noisy_latents"].shape[0]
    with nn.logical_axis_rules(shd.rules_tuple(rules)):
        boxed = jax.eval_shape(
            lambda r: model.init(r, sample_inputs, jnp.zeros((batch,)))["params"], jax.random.key(0)
        )
        return shd.logical_to_sharding(boxed, mesh, rules)


def state_shardings(abstract_state: TrainState, param_sh: Any, mesh: Mesh) -> TrainState:
    """Shardings for every leaf: params, EMA and the Adam moments follow the params' logical names."""
    rep = shd.replicated(mesh)
    param_struct = jax.tree_util.tree_structure(abstract_state.params)
    return TrainState(
        step=rep,
        params=param_sh,
        opt_state=_map_param_like(abstract_state.opt_state, param_struct, lambda _: param_sh, rep),
        ema_params=param_sh,
        nonfinite_streak=rep,
        nonfinite_total=rep,
    )


def _map_param_like(tree, param_struct, assign, rep):
    """Walks optimizer state (tuples / namedtuples) and assigns param shardings to param-shaped trees."""
    if jax.tree_util.tree_structure(tree) == param_struct:
        return assign(tree)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_map_param_like(x, param_struct, assign, rep) for x in tree))
    if isinstance(tree, tuple | list):
        return type(tree)(_map_param_like(x, param_struct, assign, rep) for x in tree)
    if isinstance(tree, dict):
        return {k: _map_param_like(v, param_struct, assign, rep) for k, v in tree.items()}
    return jax.tree.map(lambda _: rep, tree)


def abstract_state(state_or_fn, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs carrying shardings, for restoring onto a (possibly different) mesh."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_or_fn, shardings
    )
