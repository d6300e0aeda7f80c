"""Building blocks of the causal 3D VAE (HunyuanVideo VAE, arXiv 2412.03603 sec. 3.1; OmniHuman-1 section 3).

The modules mirror diffusers' `AutoencoderKLHunyuanVideo` one to one (same sub-module names, so the
parameter paths map mechanically to the diffusers state dict), but are channels-last: video (B, F, H, W, C).

Two optional streaming collections let the same modules run a long video chunk by chunk:
- `cache` (mutable): each causal conv stores the padded input frames that the next chunk's first windows
  still need; each upsampler remembers whether it has seen the first chunk (whose first frame stands alone).
- `gn_stats` (read-only) / `gn_accum` (mutable): diffusers' GroupNorm pools its statistics over all frames,
  so a chunk cannot normalise with its own statistics. Given `gn_stats`, a norm uses those whole-video
  statistics; with `gn_accum` mutable it records the (count, mean, M2) moments of its own input.
Without these collections every module computes exactly what diffusers computes on the full tensor.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_AXES = ("null", "null", "null", "conv_in", "conv_out")  # (kT, kH, kW, C_in, C_out)
KERNEL_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")  # N(0, 1 / fan_in)


class Conv3d(nn.Module):
    """A plain 3D convolution without padding; kernel stored as (kT, kH, kW, C_in, C_out)."""

    features: int
    kernel_size: int = 3
    strides: tuple[int, int, int] = (1, 1, 1)

    @nn.compact
    def __call__(self, x: jax.Array, repeated: bool = False) -> jax.Array:  # (B, F, H, W, C_in)
        """`repeated`: every input frame is the same frame (a single frame, causally padded)."""
        k = self.kernel_size
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(KERNEL_INIT, CONV_AXES),
            (k, k, k, x.shape[-1], self.features),
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
            (self.features,),
        )
        if repeated:
            y = conv3d_repeated_frame(x, kernel.astype(x.dtype), self.strides)
        else:
            conv = conv3d_as_2d if jax.default_backend() == "cpu" else conv3d_native
            y = conv(x, kernel.astype(x.dtype), self.strides)
        return y + bias.astype(y.dtype)  # (B, F', H', W', C_out)


def conv3d_native(x: jax.Array, kernel: jax.Array, strides: tuple[int, int, int]) -> jax.Array:
    """One XLA 3D convolution (cuDNN / TPU convolution units handle these directly)."""
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding="VALID", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )  # (B, F', H', W', C_out)


def conv3d_as_2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int, int]) -> jax.Array:
    """The same convolution as a sum over temporal taps of 2D convolutions on frames folded into the batch.

    Equal to `conv3d_native` up to float summation order; XLA:CPU runs 2D convolutions through its tuned
    Eigen path but 3D ones through a generic loop, which makes this 3-7x faster on CPU (fwd + bwd).
    """
    b, f, _, _, c = x.shape
    kt, st = kernel.shape[0], strides[0]
    f_out = (f - kt) // st + 1
    y = None
    for t in range(kt):
        frames = x[:, t : t + (f_out - 1) * st + 1 : st]  # (B, F', H, W, C)
        out = jax.lax.conv_general_dilated(
            frames.reshape(b * f_out, *frames.shape[2:]),
            kernel[t],
            window_strides=strides[1:],
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # (B * F', H', W', C_out)
        y = out if y is None else y + out
    return y.reshape(b, f_out, *y.shape[1:])  # (B, F', H', W', C_out)


def conv3d_repeated_frame(x: jax.Array, kernel: jax.Array, strides: tuple[int, int, int]) -> jax.Array:
    """The 3D convolution of a clip whose frames are all one frame: a 2D convolution of that frame with
    the kernel summed over its temporal taps, repeated over the output frames.

    This is a single image through the causal VAE (the first-frame path: replicate padding copies the
    frame), at a third of the 3D convolution's cost for a 3-tap kernel.
    """
    b, f, _, _, _ = x.shape
    kt, st = kernel.shape[0], strides[0]
    f_out = (f - kt) // st + 1
    y = jax.lax.conv_general_dilated(
        x[:, 0],
        kernel.sum(axis=0),
        window_strides=strides[1:],
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # (B, H', W', C_out)
    return jnp.broadcast_to(y[:, None], (b, f_out, *y.shape[1:]))  # (B, F', H', W', C_out)


class CausalConv3d(nn.Module):
    """diffusers `HunyuanVideoCausalConv3d`: replicate padding, k - 1 frames before the first, none after.

    In streaming mode (mutable `cache`) the frames a later chunk still needs are carried over instead.
    """

    features: int
    kernel_size: int = 3
    strides: tuple[int, int, int] = (1, 1, 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (B, F, H, W, C)
        k, p = self.kernel_size, self.kernel_size // 2
        x = jnp.pad(x, ((0, 0), (0, 0), (p, p), (p, p), (0, 0)), mode="edge")
        streaming = self.is_mutable_collection("cache")
        if streaming and self.has_variable("cache", "frames"):
            prefix = self.get_variable("cache", "frames")  # frames left over by the previous chunk
        else:
            prefix = jnp.repeat(x[:, :1], k - 1, axis=1)  # replicate the first frame
        single_frame = not streaming and x.shape[1] == 1  # the prefix repeats that frame
        x = jnp.concatenate([prefix, x], axis=1)
        if streaming:
            stride_t = self.strides[0]
            num_windows = (x.shape[1] - k) // stride_t + 1
            if num_windows < 1:
                raise ValueError(
                    f"chunk of {x.shape[1] - prefix.shape[1]} frames is too short for {self.name}"
                )
            self.put_variable("cache", "frames", x[:, num_windows * stride_t :])
        return Conv3d(self.features, k, self.strides, name="conv")(x, repeated=single_frame)


class GroupNorm(nn.Module):
    """torch.nn.GroupNorm over (C / G, F, H, W) per group, with the streaming statistics hooks above."""

    num_groups: int
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (B, ..., C)
        c, g = x.shape[-1], self.num_groups
        if c % g:
            raise ValueError(f"{self.name}: {c} channels are not divisible by norm_num_groups={g}")
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)), (c,)
        )
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)), (c,))
        xg = x.astype(jnp.float32).reshape(x.shape[0], -1, g, c // g)  # (B, N, G, C/G)
        count = xg.shape[1] * xg.shape[3]
        mean = xg.mean(axis=(1, 3))  # (B, G)
        if self.is_mutable_collection("gn_accum"):
            m2 = jnp.square(xg - mean[:, None, :, None]).sum(axis=(1, 3))
            self.put_variable("gn_accum", "count", jnp.float32(count))
            self.put_variable("gn_accum", "mean", mean)
            self.put_variable("gn_accum", "m2", m2)
        if self.has_variable("gn_stats", "mean"):
            mean = self.get_variable("gn_stats", "mean")
            var = self.get_variable("gn_stats", "var")
        else:
            var = jnp.square(xg - mean[:, None, :, None]).mean(axis=(1, 3))
        y = (xg - mean[:, None, :, None]) * jax.lax.rsqrt(var[:, None, :, None] + self.eps)
        y = y.reshape(x.shape) * scale + bias
        return y.astype(x.dtype)


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        name=name,
        kernel_init=nn.with_logical_partitioning(KERNEL_INIT, ("conv_in", "conv_out")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
    )


class ResnetBlock(nn.Module):
    """diffusers `HunyuanVideoResnetBlockCausal3D` (dropout 0, SiLU)."""

    features: int
    num_groups: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (B, F, H, W, C_in)
        h = nn.silu(GroupNorm(self.num_groups, name="norm1")(x))
        h = CausalConv3d(self.features, name="conv1")(h)
        h = nn.silu(GroupNorm(self.num_groups, name="norm2")(h))
        h = CausalConv3d(self.features, name="conv2")(h)
        if x.shape[-1] != self.features:
            x = CausalConv3d(self.features, kernel_size=1, name="conv_shortcut")(x)
        return h + x  # (B, F, H, W, C_out)


class FrameCausalAttention(nn.Module):
    """Single-head self-attention of the mid block; a token sees tokens of its own and earlier frames."""

    num_groups: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (B, F, H, W, C)
        b, f, hgt, wid, c = x.shape
        h = GroupNorm(self.num_groups, name="group_norm")(x).reshape(b, f * hgt * wid, c)  # (B, N, C)
        q, k, v = (_dense(c, name)(h) for name in ("to_q", "to_k", "to_v"))
        key_frame = jnp.repeat(jnp.arange(f), hgt * wid)  # (N,)

        def attend(frame_and_queries: tuple[jax.Array, jax.Array]) -> jax.Array:
            t, q_t = frame_and_queries  # q_t: (B, h w, C), the queries of frame t
            scores = jnp.einsum("bqc,bkc->bqk", q_t, k).astype(jnp.float32) / math.sqrt(c)  # (B, h w, N)
            scores = jnp.where(key_frame <= t, scores, -jnp.inf)
            return jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(scores, axis=-1).astype(v.dtype), v)

        # one query frame at a time: peak memory (B, h w, N) scores instead of (B, N, N)
        queries = q.reshape(b, f, hgt * wid, c).transpose(1, 0, 2, 3)  # (F, B, h w, C)
        out = jax.lax.map(attend, (jnp.arange(f), queries))  # (F, B, h w, C)
        out = _dense(c, "to_out_0")(out.transpose(1, 0, 2, 3).reshape(b, f * hgt * wid, c))
        return out.reshape(x.shape) + x


class MidBlock(nn.Module):
    """diffusers `HunyuanVideoMidBlock3D` with one attention layer: resnet, attention, resnet."""

    num_groups: int
    add_attention: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (B, T, h, w, C)
        c = x.shape[-1]
        x = ResnetBlock(c, self.num_groups, name="resnets_0")(x)
        if self.add_attention:
            x = FrameCausalAttention(self.num_groups, name="attentions_0")(x)
        return ResnetBlock(c, self.num_groups, name="resnets_1")(x)


class Downsample(nn.Module):
    """Strided causal conv; stride (2, 2, 2), (1, 2, 2) or (2, 1, 1) over (F, H, W)."""

    features: int
    strides: tuple[int, int, int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (B, F, H, W, C)
        return CausalConv3d(self.features, strides=self.strides, name="conv")(x)


class Upsample(nn.Module):
    """Nearest upsampling, the first video frame only spatially (it stands alone), then a causal conv."""

    features: int
    factors: tuple[int, int, int]  # (t, s, s)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (B, F, H, W, C)
        ft, fh, fw = self.factors
        first = True
        if self.is_mutable_collection("cache"):
            first = not self.has_variable("cache", "started")
            self.put_variable("cache", "started", jnp.zeros((), jnp.int32))

        def up(v: jax.Array, t: int) -> jax.Array:
            return jnp.repeat(jnp.repeat(jnp.repeat(v, t, axis=1), fh, axis=2), fw, axis=3)

        if first:
            x = jnp.concatenate([up(x[:, :1], 1), up(x[:, 1:], ft)], axis=1)  # (B, 1 + t (F - 1), sH, sW, C)
        else:
            x = up(x, ft)  # (B, t F, sH, sW, C)
        return CausalConv3d(self.features, name="conv")(x)


class DownBlock(nn.Module):
    features: int
    num_layers: int
    num_groups: int
    down_strides: tuple[int, int, int] | None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            x = ResnetBlock(self.features, self.num_groups, name=f"resnets_{i}")(x)
        if self.down_strides is not None:
            x = Downsample(self.features, self.down_strides, name="downsamplers_0")(x)
        return x


class UpBlock(nn.Module):
    features: int
    num_layers: int
    num_groups: int
    up_factors: tuple[int, int, int] | None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            x = ResnetBlock(self.features, self.num_groups, name=f"resnets_{i}")(x)
        if self.up_factors is not None:
            x = Upsample(self.features, self.up_factors, name="upsamplers_0")(x)
        return x


def resampling_factors(
    num_blocks: int, spatial_ratio: int, temporal_ratio: int
) -> list[tuple[int, int, int] | None]:
    """Per block (T, H, W) down/up factors, the layout of diffusers' HunyuanVideo encoder and decoder.

    Spatial halvings go in the first log2(spatial_ratio) blocks, temporal halvings in the blocks just before
    the last one; the last block never resamples in time. Returns None for blocks without resampling.
    """
    n_spatial, n_time = int(math.log2(spatial_ratio)), int(math.log2(temporal_ratio))
    factors: list[tuple[int, int, int] | None] = []
    for i in range(num_blocks):
        is_final = i == num_blocks - 1
        s = 2 if i < n_spatial else 1
        t = 2 if (i >= num_blocks - 1 - n_time and not is_final) else 1
        factors.append((t, s, s) if (s, t) != (1, 1) else None)
    return factors
