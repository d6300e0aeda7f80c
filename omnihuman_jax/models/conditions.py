"""Condition encoders of OmniHuman section 3.2: audio tokens and the pose guider.

- Audio: per-video-frame wav2vec2 features are concatenated with those of adjacent frames (a window of
  +/- `audio_window`), mapped by an MLP to the model width, and grouped into tokens per latent frame.
  The first latent frame covers one video frame and each later one covers 4, as the causal VAE does; the
  first frame's tokens are repeated 4 times, which (without `frame_pos`) leaves attention over them
  unchanged. Attention over a latent frame's tokens is blind to their order, so a video token cannot tell
  which of its 4 video frames a token came from; `frame_pos` adds a learned embedding per slot (video
  frame within the latent frame, token within the frame), as a projection of the whole 4-frame group
  (OmniAvatar's and MultiTalk's) sees the order.
- Pose: keypoint heatmaps go through a small conv net (the pose guider) to latent resolution and latent
  frames, and features of adjacent latent frames are concatenated. The result is stacked with the noisy
  latent along channels.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnihuman_jax.models.layers import dense, layer_norm

VAE_TEMPORAL = 4  # video frames per latent frame after the first


def group_video_frames(x: jax.Array) -> jax.Array:
    """(B, F, ...) with F = 1 + 4(T-1) -> (B, T, 4, ...): frame 0 is repeated to fill its group."""
    f = x.shape[1]
    if (f - 1) % VAE_TEMPORAL:
        raise ValueError(f"video frame count {f} is not 1 + 4k")
    first = jnp.repeat(x[:, :1], VAE_TEMPORAL - 1, axis=1)
    x = jnp.concatenate([first, x], axis=1)  # (B, 4T, ...)
    t = x.shape[1] // VAE_TEMPORAL
    return x.reshape(x.shape[0], t, VAE_TEMPORAL, *x.shape[2:])


def frame_windows(x: jax.Array, k: int) -> jax.Array:
    """(B, F, ...) -> (B, F, 2k+1, ...): each frame with its +/- k neighbours, edges replicated."""
    if k == 0:
        return x[:, :, None]
    f = x.shape[1]
    padded = jnp.concatenate([jnp.repeat(x[:, :1], k, 1), x, jnp.repeat(x[:, -1:], k, 1)], axis=1)
    idx = jnp.arange(f)[:, None] + jnp.arange(2 * k + 1)[None, :]  # (F, 2k+1)
    return padded[:, idx]


class AudioProjector(nn.Module):
    """(B, F, L_audio, D_audio) per-video-frame features -> (B, T, 4 * tokens_per_frame, D) tokens."""

    hidden_size: int
    audio_hidden: int
    window: int
    tokens_per_frame: int
    frame_pos: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, feats: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, f = feats.shape[:2]
        x = frame_windows(feats, self.window).reshape(b, f, -1)  # (B, F, (2k+1)*L*D)
        x = nn.silu(dense(self.audio_hidden, ("null", "mlp"), name="proj_in", **kw)(x))
        x = nn.silu(dense(self.audio_hidden, ("mlp", "null"), name="proj_mid", **kw)(x))
        x = dense(self.tokens_per_frame * self.hidden_size, ("null", "embed"), name="proj_out", **kw)(x)
        x = x.reshape(b, f, self.tokens_per_frame, self.hidden_size)  # (B, F, n, D)
        x = layer_norm(affine=True, name="norm", dtype=self.dtype)(x)
        x = group_video_frames(x)  # (B, T, 4, n, D)
        x = x.reshape(b, x.shape[1], -1, self.hidden_size)  # (B, T, 4n, D)
        if self.frame_pos:
            slots = VAE_TEMPORAL * self.tokens_per_frame
            init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("null", "embed"))
            x = x + self.param("frame_pos", init, (slots, self.hidden_size), self.param_dtype).astype(x.dtype)
        return x


def conv(features: int, kernel: int, stride: int, name: str, dtype, param_dtype) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding="SAME",
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
        name=name,
    )


class PoseGuider(nn.Module):
    """(B, F, h*s, w*s, K) heatmaps -> (B, T, h, w, (2*window+1) * out_channels) pose features."""

    channels: tuple[int, ...]
    out_channels: int
    heatmap_scale: int
    window: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, heatmaps: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        n_down = int(round(math.log2(self.heatmap_scale)))
        if 2**n_down != self.heatmap_scale:
            raise ValueError(f"model.pose_heatmap_scale={self.heatmap_scale} must be a power of 2")
        b = heatmaps.shape[0]
        x = group_video_frames(heatmaps)  # (B, T, 4, Hs, Ws, K)
        t, _, hs, ws, k = x.shape[1:]
        x = jnp.moveaxis(x, 2, -2).reshape(b * t, hs, ws, VAE_TEMPORAL * k)  # frames stacked on channels
        x = nn.silu(conv(self.channels[0], 3, 1, "conv_in", **kw)(x))
        for i in range(n_down):
            ch = self.channels[min(i + 1, len(self.channels) - 1)]
            x = nn.silu(conv(ch, 3, 2, f"down_{i}", **kw)(x))
        x = conv(self.out_channels, 1, 1, "conv_out", **kw)(x)
        x = x.reshape(b, t, *x.shape[1:])  # (B, T, h, w, Cp)
        return temporal_neighbours(x, self.window)


def temporal_neighbours(x: jax.Array, k: int) -> jax.Array:
    """(B, T, h, w, C) -> (B, T, h, w, (2k+1) C): features of latent frames t-k..t+k, zeros past the ends."""
    if k == 0:
        return x
    t = x.shape[1]
    pad = jnp.zeros_like(x[:, :k])
    padded = jnp.concatenate([pad, x, pad], axis=1)
    return jnp.concatenate([padded[:, i : i + t] for i in range(2 * k + 1)], axis=-1)


def motion_channels(motion_latents: jax.Array, motion_mask: jax.Array, hold: bool = False) -> jax.Array:
    """Motion-frame latents plus a binary mask channel: (B, T, h, w, C + 1).

    Without `hold` the latent channels are zeros where no motion frame is given. With `hold`, every frame
    after the motion frames (a prefix of the clip) also gets the last motion frame's latent, with mask 0,
    as Stable Video Diffusion stacks its conditioning frame on every frame: each token to predict then
    sees the motion frame at its own position, and holding it still is a local map rather than a copy
    through attention. Samples with no motion frames get zeros either way.
    """
    m = motion_mask.astype(motion_latents.dtype)[:, :, None, None, None]  # (B, T, 1, 1, 1)
    mask_ch = jnp.broadcast_to(m, (*motion_latents.shape[:-1], 1))
    latents = motion_latents * m
    if hold:
        n = jnp.sum(motion_mask.astype(jnp.int32), axis=1)  # (B,) motion frames given
        last = jnp.take_along_axis(latents, jnp.maximum(n - 1, 0)[:, None, None, None, None], axis=1)
        last = last * (n > 0).astype(latents.dtype)[:, None, None, None, None]  # (B, 1, h, w, C)
        latents = jnp.where(m > 0, latents, last)
    return jnp.concatenate([latents, mask_ch], axis=-1)
