"""Training the causal 3D VAE (HunyuanVideo's KL video VAE, used by OmniHuman-1 section 3 for its latents).

The loss is the usual KL-VAE objective (`omnihuman_jax.vae_losses.vae_loss`): L1 + (1 - SSIM)
reconstruction of the decoded reparameterised posterior sample, plus a small KL to N(0, I). The step is
one `jax.jit` over the same `(data, fsdp, tensor)` mesh and logical-axis rules as the DiT
(`omnihuman_jax.sharding`): parameters carry the VAE's logical names (`conv_in`, `conv_out`, `norm`,
`null`), the batch is sharded over `(data, fsdp)`. AdamW with warmup + cosine decay and global-norm
clipping come from `omnihuman_jax.train_state`.

`inflate_causal` turns an image-trained VAE into a video one at the end of the image phase: each 3D
kernel's temporal taps are summed onto its last (current-frame) tap, the others zeroed (MAGVIT-v2's causal
inflation, arXiv 2310.05737 sec. 3.1). The first-frame path computes the same function, and every latent
frame starts as the image code of the last frame it covers; without it, clip training starts from the
image phase's untrained individual taps and settles on repeating frame 0 (docs/learning_proof_history.md).

After training, `latent_statistics` measures the posterior means so the saved config carries a
`shift_factor` / `scaling_factor` that give the diffusion model unit-variance latents (the role of
HunyuanVideo's 0.476986).

It knows nothing of files or the CLI: `launch/train_vae.py` wires data, checkpoints and export.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from omnihuman_jax import sharding as shd
from omnihuman_jax.models.vae import (
    VAEConfig,
    decode_unscaled,
    encode_moments,
    init_vae,
    posterior_sample,
    vae_logical_axes,
)
from omnihuman_jax.train_state import lr_schedule, make_optimizer, update_if_finite
from omnihuman_jax.vae_losses import vae_loss

Params = Any
StepFn = Callable[[Any, jax.Array], tuple[Any, dict[str, jax.Array]]]


@flax.struct.dataclass
class VAETrainState:
    step: jax.Array  # () int32
    params: Params
    opt_state: Any
    nonfinite_total: jax.Array  # () int32: steps skipped for a non-finite loss or gradient


@dataclasses.dataclass(frozen=True)
class VAELossWeights:
    l1: float = 1.0
    ssim: float = 0.2
    kl: float = 1e-6
    motion_l1: float = 0.0
    region_l1: float = 0.0  # weight of the L1 over landmark regions; the step then takes a region map
    temporal_l1: float = 0.0  # weight of the frame-to-frame change L1 over the same regions (needs the map)

    @property
    def needs_region(self) -> bool:
        return bool(self.region_l1 or self.temporal_l1)


def vae_param_shardings(cfg: VAEConfig, mesh: Mesh, rules) -> Params:
    """NamedShardings of every VAE parameter from its logical axis names and the config rules.

    The VAE names kernel dimensions that are never sharded `null` (a 3D conv kernel has three), which
    flax's own mapping rejects as repeated names, so each name is looked up in the rules here; a name
    without a rule, or mapped to None, stays unsharded.
    """
    table = dict(shd.rules_tuple(rules))

    def to_sharding(spec: PartitionSpec) -> NamedSharding:
        axes = [table.get(name) if name is not None else None for name in spec]
        used = [a for ax in axes if ax is not None for a in (ax if isinstance(ax, tuple) else (ax,))]
        if len(used) != len(set(used)):
            raise ValueError(f"VAE logical axes {tuple(spec)} map mesh axes {used} more than once")
        return NamedSharding(mesh, PartitionSpec(*axes))

    return jax.tree.map(to_sharding, vae_logical_axes(cfg), is_leaf=lambda x: isinstance(x, PartitionSpec))


def _opt_state_shardings(abstract_opt: Any, params: Params, param_sh: Params, mesh: Mesh) -> Any:
    """Adam moments follow their parameter's sharding; scalars (counts) are replicated."""
    struct = jax.tree_util.tree_structure(params)
    rep = shd.replicated(mesh)

    def walk(tree):
        if jax.tree_util.tree_structure(tree) == struct:
            return param_sh
        if isinstance(tree, tuple) and hasattr(tree, "_fields"):
            return type(tree)(*(walk(x) for x in tree))
        if isinstance(tree, tuple | list):
            return type(tree)(walk(x) for x in tree)
        if isinstance(tree, dict):
            return {k: walk(v) for k, v in tree.items()}
        return jax.tree.map(lambda _: rep, tree)

    return walk(abstract_opt)


def init_vae_train_state(
    cfg: VAEConfig,
    optimizer: optax.GradientTransformation,
    seed: int,
    mesh: Mesh,
    rules,
    params: Params | None = None,
) -> tuple[VAETrainState, VAETrainState]:
    """Returns (state, state_shardings); `params` (e.g. a loaded VAE) replaces the random init."""
    param_sh = vae_param_shardings(cfg, mesh, rules)
    host = init_vae(cfg, jax.random.key(seed)) if params is None else params
    params = jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x, jnp.float32), s), host, param_sh)
    abstract_opt = jax.eval_shape(optimizer.init, params)
    rep = shd.replicated(mesh)
    shardings = VAETrainState(
        step=rep,
        params=param_sh,
        opt_state=_opt_state_shardings(abstract_opt, params, param_sh, mesh),
        nonfinite_total=rep,
    )
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    step, nonfinite = (jax.device_put(jnp.zeros((), jnp.int32), rep) for _ in range(2))  # distinct buffers
    return VAETrainState(step=step, params=params, opt_state=opt_state, nonfinite_total=nonfinite), shardings


def vae_lr_schedule(opt_cfg: Any, total_steps: int, restart_at: int = 0) -> optax.Schedule:
    """The DiT's warmup + cosine schedule over `total_steps`, or, with 0 < restart_at < total_steps, one over
    the first `restart_at` steps (the image phase) and a fresh one, warmup included, over the rest (the
    video phase), which would otherwise train at the decayed tail of the rate."""
    if not 0 < restart_at < total_steps:
        return lr_schedule(opt_cfg, total_steps)
    phases = [lr_schedule(opt_cfg, restart_at), lr_schedule(opt_cfg, total_steps - restart_at)]
    return optax.join_schedules(phases, [restart_at])


def make_vae_optimizer(opt_cfg: Any, total_steps: int, restart_at: int = 0) -> optax.GradientTransformation:
    """The DiT's AdamW recipe (warmup, cosine decay, clipping, decay on kernels only) on `vae_lr_schedule`."""
    return make_optimizer(opt_cfg, total_steps, vae_lr_schedule(opt_cfg, total_steps, restart_at))


def inflate_causal(params: Params) -> Params:
    """Causal inflation of every 3D conv kernel (kT, kH, kW, C_in, C_out) with kT > 1: the sum over taps
    goes on the last tap (the current frame), the earlier taps become zero. A single frame (whose causal
    padding repeats it) sees the summed kernel either way, so the image path's function is unchanged.
    """

    def inflate(path: tuple, x: jax.Array) -> jax.Array:
        if path[-1].key != "kernel" or x.ndim != 5 or x.shape[0] == 1:
            return x
        return jnp.zeros_like(x).at[-1].set(x.sum(axis=0))

    return jax.tree_util.tree_map_with_path(inflate, params)


def frames_to_unit_range(frames: jax.Array) -> jax.Array:
    """uint8 RGB -> float32 in [-1, 1]."""
    return frames.astype(jnp.float32) / 127.5 - 1.0


def frames_from_unit_range(frames: Any) -> np.ndarray:
    """Decoded frames, roughly in [-1, 1] -> uint8 RGB (rounded and clipped), on the host."""
    return np.clip(np.round((np.asarray(frames) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_vae_train_step(
    cfg: VAEConfig,
    optimizer: optax.GradientTransformation,
    weights: VAELossWeights,
    seed: int,
    lr_fn: Callable[[jax.Array], jax.Array] | None = None,
) -> StepFn:
    """(state, frames (B, F, H, W, 3) uint8[, region (B, F, H, W)]) -> (state, metrics).

    `region` is the weight map of `weights.region_l1` and `weights.temporal_l1` (required when either is
    non-zero). Non-finite steps leave params unchanged.
    """

    def loss_fn(params: Params, x: jax.Array, rng: jax.Array, region: jax.Array | None):
        mean, logvar = encode_moments(cfg, params, x)  # (B, T, h, w, L) each
        z = posterior_sample(mean, logvar, rng)
        recon = decode_unscaled(cfg, params, z)  # (B, F, H, W, 3)
        loss, parts = vae_loss(
            recon,
            x,
            mean,
            logvar,
            l1_weight=weights.l1,
            ssim_weight=weights.ssim,
            kl_weight=weights.kl,
            motion_l1_weight=weights.motion_l1,
            region=region,
            region_l1_weight=weights.region_l1,
            temporal_l1_weight=weights.temporal_l1,
        )
        return loss, parts

    def step(state: VAETrainState, frames: jax.Array, region: jax.Array | None = None):
        x = frames_to_unit_range(frames)
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, x, rng, region)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply_update(_):
            updates, new_opt = optimizer.update(grads, state.opt_state, state.params, grad_norm=grad_norm)
            return optax.apply_updates(state.params, updates), new_opt

        # A non-finite step keeps params and optimizer state.
        params, opt_state = update_if_finite(finite, apply_update, (state.params, state.opt_state))
        new_state = VAETrainState(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
        )
        metrics = {"loss": loss, "grad_norm": grad_norm, **parts}
        metrics["nonfinite_total"] = new_state.nonfinite_total
        if lr_fn is not None:
            metrics["lr"] = lr_fn(state.step)
        return new_state, metrics

    return step


def jit_vae_train_step(
    step_fn: StepFn, shardings: VAETrainState, mesh: Mesh, with_region: bool = False
) -> StepFn:
    """jit with the state's shardings in and out (donated) and the frames (and region map, when
    `with_region`) sharded over (data, fsdp)."""
    rep = shd.replicated(mesh)
    batch_in = (shd.batch_sharding(mesh, 5),) + ((shd.batch_sharding(mesh, 4),) if with_region else ())
    return jax.jit(
        step_fn,
        in_shardings=(shardings, *batch_in),
        out_shardings=(shardings, rep),
        donate_argnums=(0,),
    )


def latent_statistics(cfg: VAEConfig, params: Params, frame_batches: list[np.ndarray]) -> tuple[float, float]:
    """(mean, std) over all elements of the posterior means of uint8 clips (B, F, H, W, 3)."""
    total, total_sq, count = 0.0, 0.0, 0
    for frames in frame_batches:
        mean, _ = encode_moments(cfg, params, frames_to_unit_range(jnp.asarray(frames)))
        m = np.asarray(mean, np.float64)
        total, total_sq, count = total + m.sum(), total_sq + np.square(m).sum(), count + m.size
    if count == 0:
        raise ValueError("latent_statistics: no frames given")
    mu = total / count
    return float(mu), float(np.sqrt(max(total_sq / count - mu * mu, 1e-12)))


def with_latent_scaling(cfg: VAEConfig, mean: float, std: float) -> VAEConfig:
    """The config whose scale_latents maps posterior means to zero mean and unit std."""
    return dataclasses.replace(cfg, shift_factor=float(mean), scaling_factor=float(1.0 / std))
