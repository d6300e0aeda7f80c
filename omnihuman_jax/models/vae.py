"""Causal 3D VAE of HunyuanVideo (arXiv 2412.03603 sec. 3.1), used by OmniHuman-1 (section 3) for its latents.

Weight-compatible with diffusers' `AutoencoderKLHunyuanVideo`; public API as in docs/design.md ("VAE API"):
`encode_video`, `decode_latents`, `encode_moments` (unscaled posterior for VAE training), `init_vae`.

Video is channels-last (B, F, H, W, C). A clip of F = 1 + 4k frames maps to T = 1 + k latent frames: the
first frame stands alone, later frames go in groups of 4; space is compressed 8x.

Long videos: with `chunk_frames` the high-resolution part of the network (encoder down blocks, decoder up
blocks) runs chunk by chunk with a causal cache, so its memory is bounded by the chunk; the latent-resolution
part (mid blocks with their frame-causal attention) runs on the whole clip. diffusers' GroupNorm pools its
statistics over all frames, so an exact chunked run needs those whole-video statistics: it repeats the chunked
pass, each pass fixing the statistics of one more norm in network order, until they stop changing (a fixed
point, which is exactly the full-video result). That costs up to (number of norms + 1) passes; `exact=False`
does one pass with per-chunk statistics instead (cheap, approximate, like diffusers' frame tiling).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from omnihuman_jax.models.vae_blocks import (
    CausalConv3d,
    Conv3d,
    DownBlock,
    GroupNorm,
    MidBlock,
    UpBlock,
    resampling_factors,
)

Params = Any


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """The fields of a diffusers `AutoencoderKLHunyuanVideo` config.json we use (defaults: HunyuanVideo)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    act_fn: str = "silu"
    scaling_factor: float = 0.476986
    shift_factor: float | None = None
    spatial_compression_ratio: int = 8
    temporal_compression_ratio: int = 4
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        if self.act_fn not in ("silu", "swish"):
            raise ValueError(f"VAEConfig.act_fn={self.act_fn!r}: only 'silu' is supported")
        if self.temporal_compression_ratio != 4:
            raise ValueError(
                f"VAEConfig.temporal_compression_ratio={self.temporal_compression_ratio}: the HunyuanVideo "
                "decoder only supports 4"
            )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"VAEConfig.block_out_channels {bad} not divisible by norm_num_groups")
        factors = resampling_factors(
            len(self.block_out_channels), self.spatial_compression_ratio, self.temporal_compression_ratio
        )
        t = math.prod(f[0] for f in factors if f)
        s = math.prod(f[1] for f in factors if f)
        if (t, s) != (self.temporal_compression_ratio, self.spatial_compression_ratio):
            raise ValueError(
                f"VAEConfig: {len(self.block_out_channels)} blocks give {t}x temporal / {s}x spatial "
                f"compression, not the configured {self.temporal_compression_ratio}x / "
                f"{self.spatial_compression_ratio}x; use more block_out_channels entries"
            )

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> VAEConfig:
        """Reads a diffusers config.json dict; unknown/bookkeeping keys (`_class_name`, ...) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in names}
        for key in ("down_block_types", "up_block_types"):
            kinds = set(config.get(key, ()))
            expected = "HunyuanVideoDownBlock3D" if key.startswith("down") else "HunyuanVideoUpBlock3D"
            if kinds - {expected}:
                raise ValueError(f"VAE config {key}={sorted(kinds)}: only {expected} is supported")
        return cls(**kwargs)

    def to_diffusers(self) -> dict[str, Any]:
        """The config.json dict diffusers' `AutoencoderKLHunyuanVideo.from_pretrained` reads."""
        out: dict[str, Any] = {"_class_name": "AutoencoderKLHunyuanVideo"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "shift_factor" and value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        n = len(self.block_out_channels)
        out["down_block_types"] = ["HunyuanVideoDownBlock3D"] * n
        out["up_block_types"] = ["HunyuanVideoUpBlock3D"] * n
        return out


class Encoder(nn.Module):
    """diffusers `HunyuanVideoEncoder3D`; `stem` runs at full resolution, `head` at latent resolution."""

    cfg: VAEConfig

    def setup(self) -> None:
        cfg = self.cfg
        g = cfg.norm_num_groups
        chans = cfg.block_out_channels
        factors = resampling_factors(
            len(chans), cfg.spatial_compression_ratio, cfg.temporal_compression_ratio
        )
        self.conv_in = CausalConv3d(chans[0])
        self.down_blocks = [
            DownBlock(c, cfg.layers_per_block, g, f) for c, f in zip(chans, factors, strict=True)
        ]
        self.mid_block = MidBlock(g, cfg.mid_block_add_attention)
        self.conv_norm_out = GroupNorm(g)
        self.conv_out = CausalConv3d(2 * cfg.latent_channels)

    def stem(self, x: jax.Array) -> jax.Array:  # (B, F, H, W, C_in) -> (B, T, h, w, C_last)
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return x

    def head(self, x: jax.Array) -> jax.Array:  # (B, T, h, w, C_last) -> (B, T, h, w, 2 L)
        x = self.mid_block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """diffusers `HunyuanVideoDecoder3D`; `stem` runs at latent resolution, `body` upsamples to pixels."""

    cfg: VAEConfig

    def setup(self) -> None:
        cfg = self.cfg
        g = cfg.norm_num_groups
        chans = tuple(reversed(cfg.block_out_channels))
        factors = resampling_factors(
            len(chans), cfg.spatial_compression_ratio, cfg.temporal_compression_ratio
        )
        self.conv_in = CausalConv3d(chans[0])
        self.mid_block = MidBlock(g, cfg.mid_block_add_attention)
        self.up_blocks = [
            UpBlock(c, cfg.layers_per_block + 1, g, f) for c, f in zip(chans, factors, strict=True)
        ]
        self.conv_norm_out = GroupNorm(g)
        self.conv_out = CausalConv3d(cfg.out_channels)

    def stem(self, z: jax.Array) -> jax.Array:  # (B, T, h, w, L) -> (B, T, h, w, C_last)
        return self.mid_block(self.conv_in(z))

    def body(self, x: jax.Array) -> jax.Array:  # (B, T, h, w, C_last) -> (B, F, H, W, C_out)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(x)))


class AutoencoderKLHunyuanVideo(nn.Module):
    """The whole VAE; parameter tree = diffusers' state dict (see interop/diffusers_vae.py)."""

    cfg: VAEConfig

    def setup(self) -> None:
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        self.quant_conv = Conv3d(2 * self.cfg.latent_channels, kernel_size=1)
        self.post_quant_conv = Conv3d(self.cfg.latent_channels, kernel_size=1)

    def encode_stem(self, x: jax.Array) -> jax.Array:
        return self.encoder.stem(x)

    def encode_head(self, h: jax.Array) -> jax.Array:  # -> moments (B, T, h, w, 2 L): mean then logvar
        return self.quant_conv(self.encoder.head(h))

    def decode_stem(self, z: jax.Array) -> jax.Array:
        return self.decoder.stem(self.post_quant_conv(z))

    def decode_body(self, h: jax.Array) -> jax.Array:
        return self.decoder.body(h)

    def __call__(self, x: jax.Array) -> jax.Array:
        moments = self.encode_head(self.encode_stem(x))
        return self.decode_body(self.decode_stem(moments[..., : self.cfg.latent_channels]))


def init_vae(cfg: VAEConfig, rng: jax.Array) -> Params:
    """Random parameters (plain arrays): kernels N(0, 1 / fan_in), norm scales 1, biases 0.

    Drawn with numpy from a seed taken from `rng`: jitting linen's `init` of the whole VAE compiles a
    forward pass plus one RNG program per tensor, which takes far longer than the draws themselves.
    """
    abstract = abstract_params(cfg)
    gen = np.random.default_rng(int(jax.random.randint(rng, (), 0, 2**31 - 1)))

    def draw(path: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        if path[-1].key == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return jnp.asarray(gen.standard_normal(leaf.shape, np.float32) / math.sqrt(fan_in))
        fill = 1.0 if path[-1].key == "scale" else 0.0
        return jnp.full(leaf.shape, fill, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract)


def vae_logical_axes(cfg: VAEConfig) -> Params:
    """PartitionSpecs of logical axis names (`conv_in`, `conv_out`, `norm`, `null`) for every parameter."""
    x = jnp.zeros((1, 1, cfg.spatial_compression_ratio, cfg.spatial_compression_ratio, cfg.in_channels))
    boxed = jax.eval_shape(AutoencoderKLHunyuanVideo(cfg).init, jax.random.PRNGKey(0), x)
    return nn.get_partition_spec(boxed)["params"]


# ----------------------------------------------------------------------------------------------------------
# Plain (unchunked) stage functions, jitted per config.


@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply(cfg: VAEConfig, method: str, params: Params, x: jax.Array) -> jax.Array:
    module = AutoencoderKLHunyuanVideo(cfg)
    return module.apply({"params": params}, x, method=getattr(AutoencoderKLHunyuanVideo, method))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply_chunk(
    cfg: VAEConfig, method: str, params: Params, x: jax.Array, cache: Params, stats: Params | None
) -> tuple[jax.Array, Params, Params]:
    """One chunk of a streaming stage: returns (output, next cache, this chunk's norm moments)."""
    variables = {"params": params, "cache": cache}
    if stats is not None:
        variables["gn_stats"] = stats
    module = AutoencoderKLHunyuanVideo(cfg)
    out, state = module.apply(
        variables, x, method=getattr(AutoencoderKLHunyuanVideo, method), mutable=["cache", "gn_accum"]
    )
    return out, state["cache"], state["gn_accum"]


def _merge_moments(a: Params | None, b: Params) -> Params:
    """Chan et al.'s parallel merge of per-group (count, mean, M2) moments of two chunks."""
    if a is None:
        return b

    def merge(ma: dict, mb: dict) -> dict:
        n = ma["count"] + mb["count"]
        delta = mb["mean"] - ma["mean"]
        return {
            "count": n,
            "mean": ma["mean"] + delta * (mb["count"] / n),
            "m2": ma["m2"] + mb["m2"] + jnp.square(delta) * (ma["count"] * mb["count"] / n),
        }

    return jax.tree.map(merge, a, b, is_leaf=lambda t: isinstance(t, dict) and "m2" in t)


def _moments_to_stats(moments: Params) -> Params:
    def to_stats(m: dict) -> dict:
        return {"mean": m["mean"], "var": m["m2"] / m["count"]}

    return jax.tree.map(to_stats, moments, is_leaf=lambda t: isinstance(t, dict) and "m2" in t)


def _initial_stats(cfg: VAEConfig, method: str, params: Params, chunk: jax.Array) -> Params:
    """Placeholder whole-video norm statistics (mean 0, var 1) with the structure a chunk's moments have.

    Any starting point converges to the exact statistics; this one avoids compiling a statistics-free
    variant of the chunk function.
    """
    shapes = _moment_shapes(cfg, method, chunk.shape, chunk.dtype)
    return jax.tree.map(
        lambda m: {"mean": jnp.zeros(m["mean"].shape), "var": jnp.ones(m["m2"].shape)},
        shapes,
        is_leaf=lambda t: isinstance(t, dict) and "m2" in t,
    )


@functools.lru_cache(maxsize=32)
def _moment_shapes(cfg: VAEConfig, method: str, shape: tuple[int, ...], dtype: Any) -> Params:
    x = jax.ShapeDtypeStruct(shape, dtype)
    return jax.eval_shape(functools.partial(_apply_chunk, cfg, method), abstract_params(cfg), x, {}, None)[2]


@functools.lru_cache(maxsize=8)
def abstract_params(cfg: VAEConfig) -> Params:
    """Parameter shapes (jax.ShapeDtypeStruct tree) of a config, from an abstract init."""
    s = cfg.spatial_compression_ratio
    x = jax.ShapeDtypeStruct((1, 1, s, s, cfg.in_channels), jnp.float32)
    return nn.meta.unbox(
        jax.eval_shape(AutoencoderKLHunyuanVideo(cfg).init, jax.random.PRNGKey(0), x)["params"]
    )


def _stream(
    cfg: VAEConfig, method: str, params: Params, chunks: list[jax.Array], exact: bool
) -> list[jax.Array]:
    """Runs a stage chunk by chunk, carrying the causal cache; see the module docstring for `exact`."""
    stats = _initial_stats(cfg, method, params, chunks[0]) if exact else None
    # pass k makes norm k (network order) exact, so N norms need at most N + 1 passes; the last one
    # finds the statistics it used unchanged (a fixed point), i.e. its outputs are the full-video ones
    passes_left = len(jax.tree.leaves(stats)) // 2 + 1
    while True:
        outputs, cache, moments = [], {}, None
        for chunk in chunks:
            out, cache, accum = _apply_chunk(cfg, method, params, chunk, cache, stats)
            outputs.append(out)
            moments = _merge_moments(moments, accum)
        if not exact:
            return outputs
        new_stats = _moments_to_stats(moments)
        passes_left -= 1
        converged = all(
            bool(jnp.array_equal(a, b))
            for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(new_stats), strict=True)
        )
        if converged or passes_left <= 0:
            return outputs
        stats = new_stats


def _split_frames(x: jax.Array, first: int, chunk: int) -> list[jax.Array]:
    """Splits axis 1 into x[:first] then pieces of `chunk` frames (the last may be shorter)."""
    pieces = [x[:, :first]]
    for start in range(first, x.shape[1], chunk):
        pieces.append(x[:, start : start + chunk])
    return pieces


# ----------------------------------------------------------------------------------------------------------
# Public API (docs/design.md, "VAE API").


def _check_video(cfg: VAEConfig, frames: jax.Array) -> None:
    if frames.ndim != 5 or frames.shape[-1] != cfg.in_channels:
        raise ValueError(f"frames must be (B, F, H, W, {cfg.in_channels}), got shape {frames.shape}")
    f, h, w = frames.shape[1:4]
    r_t, r_s = cfg.temporal_compression_ratio, cfg.spatial_compression_ratio
    if (f - 1) % r_t:
        raise ValueError(
            f"frames: F={f} frames, but the causal VAE needs F = 1 + {r_t} k; "
            f"e.g. keep the first {1 + r_t * ((f - 1) // r_t)} frames"
        )
    if h % r_s or w % r_s:
        raise ValueError(f"frames: H x W = {h} x {w} must be multiples of {r_s}; resize or crop first")
    if not jnp.issubdtype(frames.dtype, jnp.floating):
        raise ValueError(f"frames: dtype {frames.dtype}; convert to float in [-1, 1] (x / 127.5 - 1) first")


def encode_moments(
    cfg: VAEConfig, params: Params, frames: jax.Array, *, chunk_frames: int | None = None, exact: bool = True
) -> tuple[jax.Array, jax.Array]:
    """Unscaled posterior (mean, logvar), each (B, T, h, w, L); logvar clamped to [-30, 20] like diffusers.

    frames: (B, F, H, W, C_in) in [-1, 1], F = 1 + 4k. `chunk_frames` (a multiple of 4): video frames per
    chunk after the first, which takes 1 + chunk_frames. Differentiable (use it to train the VAE).
    """
    _check_video(cfg, frames)
    frames = jnp.asarray(frames, jnp.float32)
    r_t = cfg.temporal_compression_ratio
    if chunk_frames is not None and (chunk_frames <= 0 or chunk_frames % r_t):
        raise ValueError(f"chunk_frames={chunk_frames} must be a positive multiple of {r_t} (video frames)")
    if chunk_frames is None or frames.shape[1] <= 1 + chunk_frames:
        h = _apply(cfg, "encode_stem", params, frames)
    else:
        chunks = _split_frames(frames, 1 + chunk_frames, chunk_frames)
        h = jnp.concatenate(_stream(cfg, "encode_stem", params, chunks, exact), axis=1)  # (B, T, h, w, C)
    moments = _apply(cfg, "encode_head", params, h)  # (B, T, h, w, 2 L)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)


def scale_latents(cfg: VAEConfig, mean: jax.Array) -> jax.Array:
    """Diffusion-space latents: (mean - shift) * scaling."""
    return (mean - (cfg.shift_factor or 0.0)) * cfg.scaling_factor


def unscale_latents(cfg: VAEConfig, latents: jax.Array) -> jax.Array:
    return latents / cfg.scaling_factor + (cfg.shift_factor or 0.0)


def encode_video(
    cfg: VAEConfig, params: Params, frames: jax.Array, *, chunk_frames: int | None = None, exact: bool = True
) -> jax.Array:
    """frames (B, F, H, W, 3) in [-1, 1], F = 1 + 4k -> scaled posterior mean (B, T, h, w, L)."""
    mean, _ = encode_moments(cfg, params, frames, chunk_frames=chunk_frames, exact=exact)
    return scale_latents(cfg, mean)


def _decode_unscaled(
    cfg: VAEConfig, params: Params, z: jax.Array, chunk_frames: int | None, exact: bool
) -> jax.Array:
    if chunk_frames is not None and chunk_frames <= 0:
        raise ValueError(f"chunk_frames={chunk_frames} must be a positive number of latent frames")
    h = _apply(cfg, "decode_stem", params, z)  # (B, T, h, w, C_last)
    if chunk_frames is None or z.shape[1] <= 1 + chunk_frames:
        return _apply(cfg, "decode_body", params, h)
    chunks = _split_frames(h, 1 + chunk_frames, chunk_frames)
    return jnp.concatenate(_stream(cfg, "decode_body", params, chunks, exact), axis=1)


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> jax.Array:
    """1D blending weights of a tile: linear ramps over `overlap` pixels on edges shared with a neighbour."""
    w = jnp.ones((n,), jnp.float32)
    ramp = (jnp.arange(overlap, dtype=jnp.float32) + 0.5) / overlap
    if overlap and not at_start:
        w = w.at[:overlap].set(ramp)
    if overlap and not at_end:
        w = w.at[n - overlap :].set(ramp[::-1])
    return w


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, max(size - tile, 0) + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)  # last tile flush with the border, so all tiles share one shape
    return starts


def _decode_tiled(
    cfg: VAEConfig,
    params: Params,
    z: jax.Array,
    chunk_frames: int | None,
    exact: bool,
    tile_size: int,
    tile_overlap: int,
) -> jax.Array:
    """Decodes overlapping latent tiles (tile_size^2, overlap in latents), blended with linear ramps."""
    b, t, hl, wl, _ = z.shape
    if not 0 <= tile_overlap < tile_size:
        raise ValueError(f"tile_overlap={tile_overlap} must be in [0, tile_size={tile_size})")
    r = cfg.spatial_compression_ratio
    th, tw = min(tile_size, hl), min(tile_size, wl)
    rows, cols = (
        _tile_starts(hl, th, tile_size - tile_overlap),
        _tile_starts(wl, tw, tile_size - tile_overlap),
    )
    acc, weight = None, jnp.zeros((hl * r, wl * r), jnp.float32)
    for i in rows:
        wy = _ramp(th * r, tile_overlap * r, i == 0, i + th >= hl)
        for j in cols:
            wx = _ramp(tw * r, tile_overlap * r, j == 0, j + tw >= wl)
            tile = _decode_unscaled(cfg, params, z[:, :, i : i + th, j : j + tw], chunk_frames, exact)
            wgt = wy[:, None] * wx[None, :]  # (th r, tw r)
            if acc is None:
                acc = jnp.zeros((b, tile.shape[1], hl * r, wl * r, tile.shape[-1]), jnp.float32)
            ys, xs = slice(i * r, (i + th) * r), slice(j * r, (j + tw) * r)
            acc = acc.at[:, :, ys, xs].add(tile * wgt[None, None, :, :, None])
            weight = weight.at[ys, xs].add(wgt)
    return acc / weight[None, None, :, :, None]


def decode_latents(
    cfg: VAEConfig,
    params: Params,
    latents: jax.Array,
    *,
    chunk_frames: int | None = None,
    tile_size: int | None = None,
    tile_overlap: int = 0,
    exact: bool = True,
) -> jax.Array:
    """Scaled latents (B, T, h, w, L) -> frames (B, 1 + 4 (T - 1), 8 h, 8 w, 3), roughly in [-1, 1].

    `chunk_frames`: latent frames per chunk after the first (which takes 1 + chunk_frames). `tile_size` /
    `tile_overlap` (in latent pixels) enable spatial tiling with blended overlaps; tiles use their own norm
    statistics, so tiling is close to, not equal to, the untiled decode.
    """
    if latents.ndim != 5 or latents.shape[-1] != cfg.latent_channels:
        raise ValueError(f"latents must be (B, T, h, w, {cfg.latent_channels}), got shape {latents.shape}")
    z = unscale_latents(cfg, jnp.asarray(latents, jnp.float32))
    if tile_size is not None and (tile_size < z.shape[2] or tile_size < z.shape[3]):
        return _decode_tiled(cfg, params, z, chunk_frames, exact, tile_size, tile_overlap)
    return _decode_unscaled(cfg, params, z, chunk_frames, exact)


def posterior_sample(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
    """z = mean + exp(logvar / 2) * eps, the reparameterised sample used when training the VAE."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def decode_unscaled(
    cfg: VAEConfig, params: Params, z: jax.Array, *, chunk_frames: int | None = None, exact: bool = True
) -> jax.Array:
    """Raw (unscaled) posterior latents (B, T, h, w, L) -> frames; differentiable when unchunked."""
    return _decode_unscaled(cfg, params, jnp.asarray(z, jnp.float32), chunk_frames, exact)
