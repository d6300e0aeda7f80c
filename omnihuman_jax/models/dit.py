"""The OmniHuman Diffusion Transformer (OmniHuman-1, sections 3.1 and 3.2), in Flax linen.

An MMDiT in HunyuanVideo's layout (dual-stream blocks, then single-stream blocks, text token refiner,
3D RoPE, QK RMSNorm), with the omni conditions:
- reference: its VAE latent goes through the same patch embedding and is packed into the token sequence
  after the video tokens, with the temporal RoPE component zeroed; no extra parameters;
- motion frames: their latents plus a mask channel are stacked on the noisy latent along channels;
- pose: pose-guider features are stacked along channels too;
- audio: frame-local cross-attention in every block;
- text: the MMDiT text stream, with an optional pooled-text vector added to the timestep embedding.
The patch embedding's condition channels (motion, pose) and the audio output projections start at zero,
so a pretrained text-to-video base is unchanged at step 0. The output is a velocity for the video tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnihuman_jax.conditions import apply_condition_mask
from omnihuman_jax.models.attention import QKV_CHECKPOINT_NAMES, resolve_backend
from omnihuman_jax.models.blocks import DualStreamBlock, SingleStreamBlock
from omnihuman_jax.models.conditions import AudioProjector, PoseGuider, motion_channels
from omnihuman_jax.models.layers import MLPEmbedder, dense, layer_norm, timestep_sinusoid
from omnihuman_jax.models.matmul import DENSE_CHECKPOINT_NAME
from omnihuman_jax.models.rope import rope_cos_sin, video_and_reference_positions
from omnihuman_jax.models.text_refiner import TextTokenRefiner

TIMESTEP_SCALE = 1000.0  # network timestep = 1000 * flow time, as in diffusers' HunyuanVideo
REMAT_POLICIES = ("none", "full", "save_dots", "save_qkv_proj", "offload")


def remat_policy(name: str):
    """The jax.checkpoint policy of a block under `model.remat` (MaxText's names where they exist).

    - `none`: no remat (every activation kept); `full`: keep only the block inputs, recompute the rest;
    - `save_dots`: keep matmul outputs without batch dims (the projections), recompute the pointwise ops;
    - `save_qkv_proj`: keep only the q/k/v projections (tagged with checkpoint_name in attention.py);
    - `offload`: like save_dots, but the saved matmul outputs go to pinned host memory. Host and device
      memory are the same on CPU, where XLA has no memory-space offload, so there it is save_dots.
    """
    policies = jax.checkpoint_policies
    # The dense layers' matmuls run under a custom VJP (models/matmul.py), where policies see no dot, so
    # they are saved by name wherever dots are.
    dense_saved = policies.save_only_these_names(DENSE_CHECKPOINT_NAME)
    save_dots = policies.save_from_both_policies(policies.checkpoint_dots_with_no_batch_dims, dense_saved)
    if name == "none":
        return None
    if name == "full":
        return policies.nothing_saveable
    if name == "save_dots":
        return save_dots
    if name == "save_qkv_proj":
        return policies.save_only_these_names(*QKV_CHECKPOINT_NAMES)
    if name == "offload":
        if jax.default_backend() == "cpu":
            return save_dots
        return _offload_dots_and_dense("device", "pinned_host")
    raise ValueError(f"model.remat={name!r}: choose one of {REMAT_POLICIES}")


def _offload_dots_and_dense(src: str, dst: str):
    """Offloads matmul outputs without batch dims and the dense layers' (tagged) outputs from src to dst.

    Written out because `save_from_both_policies` takes only policies that answer True or False.
    """
    policies = jax.checkpoint_policies
    dots = policies.offload_dot_with_no_batch_dims(src, dst)
    dense = policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[],
        names_which_can_be_offloaded=[DENSE_CHECKPOINT_NAME],
        offload_src=src,
        offload_dst=dst,
    )

    def policy(prim, *args, **params):
        return (dots if prim.name == "dot_general" else dense)(prim, *args, **params)

    return policy


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    hidden_size: int
    num_heads: int
    num_dual_blocks: int
    num_single_blocks: int
    num_refiner_blocks: int
    mlp_ratio: float
    patch_size: int
    latent_channels: int
    text_dim: int
    pooled_text_dim: int
    guidance_embeds: bool
    rope_theta: float
    rope_axes_dim: tuple[int, int, int]
    audio_layers: int
    audio_dim: int
    audio_hidden: int
    audio_window: int
    audio_tokens_per_frame: int
    pose_channels: int
    pose_heatmap_scale: int
    pose_guider_channels: tuple[int, ...]
    pose_feature_channels: int
    pose_window: int
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "auto"
    remat: str = "none"
    scan_layers: bool = False
    use_audio: bool = True
    use_pose: bool = True
    # Hold the last motion frame on the frames to predict (conditions.motion_channels). False here so that
    # configs saved before it existed keep their behaviour; configs/base.py turns it on for new runs.
    motion_hold: bool = False
    # Confine each block's audio update to the `audio_region` input (the mouth or face; HunyuanVideo-Avatar's
    # face-aware audio adapter). Without it every token of a latent frame gets the same update, and at toy
    # scale the DiT learned no use of audio, not even of the true lip opening (docs/learning_proof_history.md,
    # session 16).
    audio_gate: bool = False
    # A learned embedding of each audio token's slot in its latent frame (which of the 4 video frames, which
    # token), so the frame-local cross-attention can tell the frames apart (conditions.AudioProjector).
    audio_frame_pos: bool = False

    @classmethod
    def from_config(cls, model_cfg: Any, **overrides) -> DiTConfig:
        """From a `config.model` ConfigDict (or mapping): unknown keys fail with their name."""
        values = dict(model_cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        values.update(overrides)
        for key in ("rope_axes_dim", "pose_guider_channels"):
            values[key] = tuple(values[key])
        return cls(**values)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def cond_channels(self) -> int:
        """Channels stacked on the noisy latent: motion latents + mask, then pose features."""
        pose = self.pose_feature_channels * (2 * self.pose_window + 1) if self.use_pose else 0
        return self.latent_channels + 1 + pose

    def validate(self) -> None:
        for key in ("hidden_size", "num_heads", "patch_size", "latent_channels", "pose_heatmap_scale"):
            if getattr(self, key) <= 0:
                raise ValueError(f"model.{key}={getattr(self, key)} must be positive")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if sum(self.rope_axes_dim) != self.head_dim:
            raise ValueError(
                f"model.rope_axes_dim={self.rope_axes_dim} must sum to the head dim {self.head_dim}"
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"model.remat={self.remat!r}: choose one of {REMAT_POLICIES}")


def patchify(x: jax.Array, p: int) -> jax.Array:
    """(B, T, H, W, C) -> (B, T*(H/p)*(W/p), p*p*C), patches flattened as (ph, pw, C)."""
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t * (h // p) * (w // p), p * p * c)


def region_tokens(region: jax.Array, p: int) -> jax.Array:
    """(B, T, h, w) region mask on the latent grid -> (B, T*(h/p)*(w/p)): a token is in when any cell is."""
    b, t, h, w = region.shape
    return region.reshape(b, t, h // p, p, w // p, p).max(axis=(3, 5)).reshape(b, t * (h // p) * (w // p))


def unpatchify(x: jax.Array, t: int, h: int, w: int, p: int) -> jax.Array:
    """(B, T*(H/p)*(W/p), p*p*C) -> (B, T, H, W, C)."""
    b = x.shape[0]
    x = x.reshape(b, t, h // p, w // p, p, p, -1).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t, h, w, -1)


class OmniHumanDiT(nn.Module):
    config: DiTConfig

    def setup_kw(self) -> dict:
        return dict(dtype=jnp.dtype(self.config.dtype), param_dtype=jnp.dtype(self.config.param_dtype))

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array], timestep: jax.Array) -> jax.Array:
        """inputs: the model inputs of a training batch (docs/design.md); timestep: (B,) flow time in [0, 1].

        `inputs["noisy_latents"]` is x_t (B, T, h, w, C); `inputs["motion_latents"]` holds the motion
        frames' clean latents (zeros elsewhere). With `audio_gate`, `inputs["audio_region"]` (B, T, h, w)
        in [0, 1] says where the audio update applies. Returns the velocity (B, T, h, w, C).
        """
        cfg, kw = self.config, self.setup_kw()
        dtype = kw["dtype"]
        backend = resolve_backend(cfg.attention, dtype)
        inputs = apply_condition_mask(inputs)
        x_t = inputs["noisy_latents"]
        b, t, h, w, _ = x_t.shape
        p = cfg.patch_size
        t_net = timestep.astype(jnp.float32) * TIMESTEP_SCALE  # (B,)

        # Timestep embedding (+ pooled text, + guidance) as in HunyuanVideoConditionEmbedding.
        temb = MLPEmbedder(cfg.hidden_size, name="timestep_embedder", **kw)(
            timestep_sinusoid(t_net).astype(dtype)
        )
        if cfg.pooled_text_dim:
            temb = temb + MLPEmbedder(cfg.hidden_size, name="text_embedder", **kw)(
                inputs["text_pooled"].astype(dtype)
            )
        if cfg.guidance_embeds:
            g = inputs["guidance"].astype(jnp.float32) * TIMESTEP_SCALE
            temb = temb + MLPEmbedder(cfg.hidden_size, name="guidance_embedder", **kw)(
                timestep_sinusoid(g).astype(dtype)
            )

        # Channel stacking: motion latents + mask, pose-guider features.
        cond = [motion_channels(inputs["motion_latents"], inputs["motion_mask"], cfg.motion_hold)]
        if cfg.use_pose:
            guider = PoseGuider(
                cfg.pose_guider_channels,
                cfg.pose_feature_channels,
                cfg.pose_heatmap_scale,
                cfg.pose_window,
                name="pose_guider",
                **kw,
            )
            cond.append(guider(inputs["pose_heatmaps"].astype(dtype)))
        cond = jnp.concatenate(cond, axis=-1).astype(dtype)  # (B, T, h, w, cond_channels)

        # Patch embedding: latent channels through `x_embedder`, condition channels through the
        # zero-initialised `cond_embedder` (together: one linear map over the stacked channels).
        x_embedder = dense(cfg.hidden_size, ("null", "embed"), name="x_embedder", **kw)
        video = x_embedder(patchify(x_t.astype(dtype), p))
        video = video + dense(
            cfg.hidden_size, ("null", "embed"), name="cond_embedder", use_bias=False, zero_init=True, **kw
        )(patchify(cond, p))
        reference = x_embedder(patchify(inputs["ref_latents"].astype(dtype), p))  # (B, hw, D)
        latent_stream = jnp.concatenate([video, reference], axis=1)
        n_video = video.shape[1]

        text = TextTokenRefiner(
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_refiner_blocks,
            cfg.mlp_ratio,
            backend,
            name="context_embedder",
            **kw,
        )(inputs["text_emb"].astype(dtype), t_net, inputs["text_mask"])

        audio_tokens = None
        if cfg.use_audio:
            audio_tokens = AudioProjector(
                cfg.hidden_size,
                cfg.audio_hidden,
                cfg.audio_window,
                cfg.audio_tokens_per_frame,
                cfg.audio_frame_pos,
                name="audio_projector",
                **kw,
            )(inputs["audio_feats"].astype(dtype))  # (B, T, Na, D)
        audio_gate = None
        if cfg.use_audio and cfg.audio_gate:
            if "audio_region" not in inputs:
                raise ValueError(
                    "model.audio_gate needs the `audio_region` input (B, T, h, w): the data pipeline adds it "
                    "from the clips' mouth landmarks, launch.sample from the --pose keypoints"
                )
            audio_gate = region_tokens(inputs["audio_region"].astype(dtype), p)  # (B, N_video)
            audio_gate = nn.with_logical_constraint(audio_gate, ("act_batch", "act_length"))

        positions = video_and_reference_positions(t, h // p, w // p, with_reference=True)
        cos, sin = rope_cos_sin(positions, cfg.rope_axes_dim, cfg.rope_theta)
        ref_valid = jnp.broadcast_to(inputs["reference_active"][:, None], (b, reference.shape[1]))
        key_mask = jnp.concatenate([jnp.ones((b, n_video), bool), ref_valid, inputs["text_mask"]], axis=1)

        carry = (latent_stream, text)
        common = dict(
            hidden_size=cfg.hidden_size,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            num_video_tokens=n_video,
            use_audio=cfg.use_audio,
            backend=backend,
            **kw,
        )
        args = (temb, key_mask, cos, sin, audio_tokens, audio_gate)
        carry = self._stack(DualStreamBlock, cfg.num_dual_blocks, "transformer_blocks", common)(carry, *args)[
            0
        ]
        carry = self._stack(SingleStreamBlock, cfg.num_single_blocks, "single_transformer_blocks", common)(
            carry, *args
        )[0]
        x = carry[0][:, :n_video]

        scale, shift = jnp.split(
            dense(2 * cfg.hidden_size, ("embed", "null"), name="norm_out", **kw)(nn.silu(temb)), 2, axis=-1
        )  # diffusers' AdaLayerNormContinuous: scale first
        x = layer_norm(dtype=dtype)(x) * (1 + scale[:, None]) + shift[:, None]
        x = dense(p * p * cfg.latent_channels, ("embed", "null"), name="proj_out", **kw)(x)
        return unpatchify(x.astype(jnp.float32), t, h, w, p)

    def _stack(self, block_cls, n: int, name: str, common: dict):
        """A callable running `n` blocks, scanned (one compiled body) or unrolled, with remat."""
        cls = block_cls
        if self.config.remat != "none":
            policy = remat_policy(self.config.remat)
            cls = nn.remat(block_cls, policy=policy, prevent_cse=not self.config.scan_layers)
        if n == 0:
            return lambda carry, *args: (carry, None)
        if self.config.scan_layers:
            scanned = nn.scan(
                cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast,) * 6,
                length=n,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            return scanned(name=name, **common)
        blocks = [cls(name=f"{name}_{i}", **common) for i in range(n)]

        def run(carry, *args):
            for blk in blocks:
                carry = blk(carry, *args)[0]
            return carry, None

        return run
