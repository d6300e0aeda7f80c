"""PyTorch blocks of the OmniHuman DiT (OmniHuman-1, section 3.2), numerically equal to the JAX model.

Module and parameter names follow diffusers' `HunyuanVideoTransformer3DModel` wherever the two models share
a part (`x_embedder.proj`, `time_text_embed`, `context_embedder.token_refiner`, `attn.to_out.0`,
`ff.net.0.proj`, `norm1.linear`, ...), so an exported OmniHuman checkpoint holds a HunyuanVideo state dict
plus the OmniHuman additions (`cond_embedder`, `audio_projector`, `pose_guider`, `*.audio_attn`).
Depends on torch only. Tensors are channels-last, as in the JAX code: video (B, T, H, W, C).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VAE_TEMPORAL = 4  # video frames per latent frame after the first
EPS = 1e-6


def layer_norm(x: Tensor) -> Tensor:
    """Non-affine LayerNorm with eps 1e-6 (the adaLN blocks' norm)."""
    return F.layer_norm(x, (x.shape[-1],), eps=EPS)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation: x (B, S, D), shift/scale (B, D)."""
    return x * (1.0 + scale[:, None]) + shift[:, None]


def timestep_sinusoid(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """(B,) network timesteps -> (B, dim) features, cos first (diffusers `Timesteps`, flip_sin_to_cos)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = t.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """q (B, Sq, H, D), k/v (B, Sk, H, D), mask broadcastable to (B, H, Sq, Sk) bool -> (B, Sq, H*D)."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2).flatten(2)


class RMSNorm(nn.Module):
    """RMSNorm over the last axis in float32 with a learned scale (QK norm)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + EPS)
        return (x32 * self.weight.float()).to(x.dtype)


class MLPEmbedder(nn.Module):
    """Linear -> SiLU -> Linear (`TimestepEmbedding`, `PixArtAlphaTextProjection`)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class AdaLinear(nn.Module):
    """`linear(silu(temb))`, named `<norm>.linear` as in diffusers' AdaLayerNorm modules."""

    def __init__(self, dim: int, n: int):
        super().__init__()
        self.linear = nn.Linear(dim, n * dim)
        self.n = n

    def forward(self, temb: Tensor) -> tuple[Tensor, ...]:
        return self.linear(F.silu(temb)).chunk(self.n, dim=-1)


class _Proj(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)


class FeedForward(nn.Module):
    """diffusers `FeedForward`: `net.0.proj` -> activation -> `net.2`."""

    def __init__(self, dim: int, mlp_dim: int, activation: str = "gelu_tanh"):
        super().__init__()
        self.net = nn.ModuleList([_Proj(dim, mlp_dim), nn.Identity(), nn.Linear(mlp_dim, dim)])
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        h = self.net[0].proj(x)
        h = F.gelu(h, approximate="tanh") if self.activation == "gelu_tanh" else F.silu(h)
        return self.net[2](h)


def split_heads(x: Tensor, heads: int) -> Tensor:
    return x.unflatten(-1, (heads, -1))


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of x (B, S, H, D) by angles given as cos/sin (S, D // 2)."""
    dtype = x.dtype
    x = x.float().unflatten(-1, (-1, 2))
    x0, x1 = x[..., 0], x[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1).flatten(-2).to(dtype)


def rope_cos_sin(positions: Tensor, axes_dim: tuple[int, ...], theta: float) -> tuple[Tensor, Tensor]:
    """positions (S, 3) -> cos, sin (S, head_dim // 2), bands concatenated in (t, h, w) order."""
    angles = []
    for i, d in enumerate(axes_dim):
        inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=positions.device) / d))
        angles.append(positions[:, i].float()[:, None] * inv_freq[None, :])
    angles = torch.cat(angles, dim=-1)
    return torch.cos(angles), torch.sin(angles)


def video_and_reference_positions(t: int, h: int, w: int, device=None) -> Tensor:
    """(T*h*w + h*w, 3): video tokens in t-major order, then the reference tokens with temporal position 0."""

    def grid(tt: int) -> Tensor:
        axes = [torch.arange(n, device=device) for n in (tt, h, w)]
        return torch.stack([g.reshape(-1) for g in torch.meshgrid(*axes, indexing="ij")], dim=-1)

    return torch.cat([grid(t), grid(1)], dim=0)


class JointAttention(nn.Module):
    """The dual block's `attn`: latent-stream `to_*`, text-stream `add_*_proj`, QK RMSNorm on both."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        hd = dim // heads
        for n in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            setattr(self, n, nn.Linear(dim, dim))
        for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            setattr(self, n, RMSNorm(hd))
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Identity()])
        self.to_add_out = nn.Linear(dim, dim)


class SelfAttention(nn.Module):
    """`to_q/k/v` with QK RMSNorm (single blocks; audio cross-attention adds `to_out`)."""

    def __init__(self, dim: int, heads: int, with_out: bool = False):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.norm_q, self.norm_k = RMSNorm(dim // heads), RMSNorm(dim // heads)
        if with_out:
            self.to_out = nn.Linear(dim, dim)

    def qkv(self, x: Tensor, ctx: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        ctx = x if ctx is None else ctx
        q = self.norm_q(split_heads(self.to_q(x), self.heads))
        k = self.norm_k(split_heads(self.to_k(ctx), self.heads))
        return q, k, split_heads(self.to_v(ctx), self.heads)


class AudioCrossAttention(SelfAttention):
    """Frame-local cross-attention: video tokens of latent frame t attend to frame t's audio tokens only."""

    def __init__(self, dim: int, heads: int):
        super().__init__(dim, heads, with_out=True)

    def forward(self, video: Tensor, audio_tokens: Tensor) -> Tensor:
        """video (B, T*HW, D), audio_tokens (B, T, Na, D) -> update (B, T*HW, D)."""
        b, n, d = video.shape
        t, na = audio_tokens.shape[1:3]
        x = layer_norm(video).reshape(b * t, n // t, d)
        q, k, v = self.qkv(x, audio_tokens.reshape(b * t, na, d))
        return self.to_out(attention(q, k, v, None).reshape(b, n, d))


class Block(nn.Module):
    """Shared by both block kinds: the audio update on the video tokens at the head of the latent stream."""

    def __init__(self, dim: int, heads: int, use_audio: bool):
        super().__init__()
        self.dim, self.heads = dim, heads
        if use_audio:
            self.audio_attn = AudioCrossAttention(dim, heads)

    def add_audio(
        self, x: Tensor, audio_tokens: Tensor | None, audio_gate: Tensor | None, n_video: int
    ) -> Tensor:
        """`audio_gate` (B, n_video), with the model's audio gate, scales each video token's update."""
        if not hasattr(self, "audio_attn"):
            return x
        video = x[:, :n_video]
        update = self.audio_attn(video, audio_tokens)
        if audio_gate is not None:
            update = update * audio_gate[:, :, None]
        return torch.cat([video + update, x[:, n_video:]], dim=1)


class DualStreamBlock(Block):
    """diffusers `HunyuanVideoTransformerBlock` plus the audio cross-attention after the joint attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, use_audio: bool):
        super().__init__(dim, heads, use_audio)
        self.norm1, self.norm1_context = AdaLinear(dim, 6), AdaLinear(dim, 6)
        self.attn = JointAttention(dim, heads)
        self.ff = FeedForward(dim, int(dim * mlp_ratio))
        self.ff_context = FeedForward(dim, int(dim * mlp_ratio))

    def forward(self, x, c, temb, key_mask, cos, sin, audio_tokens, audio_gate, n_video):
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = self.norm1(temb)
        c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(temb)
        a, h = self.attn, self.heads
        nx, nc = modulate(layer_norm(x), shift, scale), modulate(layer_norm(c), c_shift, c_scale)
        q = apply_rope(a.norm_q(split_heads(a.to_q(nx), h)), cos, sin)
        k = apply_rope(a.norm_k(split_heads(a.to_k(nx), h)), cos, sin)
        v = split_heads(a.to_v(nx), h)
        cq = a.norm_added_q(split_heads(a.add_q_proj(nc), h))
        ck = a.norm_added_k(split_heads(a.add_k_proj(nc), h))
        cv = split_heads(a.add_v_proj(nc), h)
        out = attention(torch.cat([q, cq], 1), torch.cat([k, ck], 1), torch.cat([v, cv], 1), key_mask)
        sx = x.shape[1]
        x = x + a.to_out[0](out[:, :sx]) * gate[:, None]
        c = c + a.to_add_out(out[:, sx:]) * c_gate[:, None]
        x = self.add_audio(x, audio_tokens, audio_gate, n_video)
        x = x + self.ff(modulate(layer_norm(x), shift_mlp, scale_mlp)) * gate_mlp[:, None]
        c = c + self.ff_context(modulate(layer_norm(c), c_shift_mlp, c_scale_mlp)) * c_gate_mlp[:, None]
        return x, c


class SingleStreamBlock(Block):
    """diffusers `HunyuanVideoSingleTransformerBlock` plus the audio cross-attention at its end."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, use_audio: bool):
        super().__init__(dim, heads, use_audio)
        mlp_dim = int(dim * mlp_ratio)
        self.norm = AdaLinear(dim, 3)
        self.attn = SelfAttention(dim, heads)
        self.proj_mlp = nn.Linear(dim, mlp_dim)
        self.proj_out = nn.Linear(dim + mlp_dim, dim)

    def forward(self, x, c, temb, key_mask, cos, sin, audio_tokens, audio_gate, n_video):
        sx = x.shape[1]
        hs = torch.cat([x, c], dim=1)
        shift, scale, gate = self.norm(temb)
        nh = modulate(layer_norm(hs), shift, scale)
        mlp = F.gelu(self.proj_mlp(nh), approximate="tanh")
        q, k, v = self.attn.qkv(nh)
        q = torch.cat([apply_rope(q[:, :sx], cos, sin), q[:, sx:]], dim=1)
        k = torch.cat([apply_rope(k[:, :sx], cos, sin), k[:, sx:]], dim=1)
        out = attention(q, k, v, key_mask)
        hs = hs + self.proj_out(torch.cat([out, mlp], dim=-1)) * gate[:, None]
        return self.add_audio(hs[:, :sx], audio_tokens, audio_gate, n_video), hs[:, sx:]


class RefinerAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Identity()])


class RefinerBlock(nn.Module):
    """diffusers `HunyuanVideoIndividualTokenRefinerBlock`."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = RefinerAttention(dim)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.ff = FeedForward(dim, int(dim * mlp_ratio), activation="silu")
        self.norm_out = AdaLinear(dim, 2)

    def forward(self, x: Tensor, temb: Tensor, pair_mask: Tensor) -> Tensor:
        a, h = self.attn, self.heads
        n = self.norm1(x)
        q, k, v = (split_heads(p(n), h) for p in (a.to_q, a.to_k, a.to_v))
        attn = a.to_out[0](attention(q, k, v, pair_mask[:, None]))
        gate_msa, gate_mlp = self.norm_out(temb)
        x = x + attn * gate_msa[:, None]
        return x + self.ff(self.norm2(x)) * gate_mlp[:, None]


class TimeTextEmbed(nn.Module):
    """Timestep (+ pooled text, + guidance) embedding, `time_text_embed.*`."""

    def __init__(self, dim: int, pooled_dim: int, guidance: bool):
        super().__init__()
        self.timestep_embedder = MLPEmbedder(256, dim)
        if pooled_dim:
            self.text_embedder = MLPEmbedder(pooled_dim, dim)
        if guidance:
            self.guidance_embedder = MLPEmbedder(256, dim)


class _Refiner(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int, mlp_ratio: float):
        super().__init__()
        self.refiner_blocks = nn.ModuleList([RefinerBlock(dim, heads, mlp_ratio) for _ in range(layers)])


class TextTokenRefiner(nn.Module):
    """diffusers `HunyuanVideoTokenRefiner` (the `context_embedder`)."""

    def __init__(self, text_dim: int, dim: int, heads: int, layers: int, mlp_ratio: float):
        super().__init__()
        self.time_text_embed = TimeTextEmbed(dim, text_dim, False)
        self.proj_in = nn.Linear(text_dim, dim)
        self.token_refiner = _Refiner(dim, heads, layers, mlp_ratio)

    def forward(self, text: Tensor, t_net: Tensor, text_mask: Tensor) -> Tensor:
        """text (B, L, D_text), t_net (B,), text_mask (B, L) bool -> (B, L, D)."""
        m = text_mask.float()[..., None]
        pooled = (text.float() * m).sum(1) / m.sum(1).clamp(min=1.0)
        e = self.time_text_embed
        temb = e.timestep_embedder(timestep_sinusoid(t_net).to(text.dtype))
        temb = temb + e.text_embedder(pooled.to(text.dtype))
        x = self.proj_in(text)
        pair = text_mask[:, :, None] & text_mask[:, None, :]
        pair[:, :, 0] = True  # every query may see key 0: no empty rows
        for blk in self.token_refiner.refiner_blocks:
            x = blk(x, temb, pair)
        return x


def group_video_frames(x: Tensor) -> Tensor:
    """(B, F, ...) with F = 1 + 4(T-1) -> (B, T, 4, ...): frame 0 repeated to fill its group."""
    f = x.shape[1]
    if (f - 1) % VAE_TEMPORAL:
        raise ValueError(f"video frame count {f} is not 1 + 4k")
    x = torch.cat([x[:, :1].expand(-1, VAE_TEMPORAL - 1, *x.shape[2:]), x], dim=1)
    return x.reshape(x.shape[0], x.shape[1] // VAE_TEMPORAL, VAE_TEMPORAL, *x.shape[2:])


def frame_windows(x: Tensor, k: int) -> Tensor:
    """(B, F, ...) -> (B, F, 2k+1, ...): each frame with its +/- k neighbours, edges replicated."""
    f = x.shape[1]
    idx = (torch.arange(f)[:, None] + torch.arange(-k, k + 1)[None, :]).clamp(0, f - 1)
    return x[:, idx.to(x.device)]


class AudioProjector(nn.Module):
    """(B, F, L_audio, D_audio) per-video-frame features -> (B, T, 4 * tokens_per_frame, D) tokens."""

    def __init__(
        self, in_dim: int, hidden: int, dim: int, window: int, tokens_per_frame: int, frame_pos: bool = False
    ):
        super().__init__()
        self.window, self.tokens, self.dim = window, tokens_per_frame, dim
        self.proj_in = nn.Linear(in_dim, hidden)
        self.proj_mid = nn.Linear(hidden, hidden)
        self.proj_out = nn.Linear(hidden, tokens_per_frame * dim)
        self.norm = nn.LayerNorm(dim, eps=EPS)
        # (4 n, D): one embedding per token slot of a latent frame (video frame within it, token within that)
        self.frame_pos = nn.Parameter(torch.zeros(4 * tokens_per_frame, dim)) if frame_pos else None

    def forward(self, feats: Tensor) -> Tensor:
        b, f = feats.shape[:2]
        x = frame_windows(feats, self.window).reshape(b, f, -1)
        x = F.silu(self.proj_mid(F.silu(self.proj_in(x))))
        x = self.norm(self.proj_out(x).reshape(b, f, self.tokens, self.dim))
        x = group_video_frames(x)  # (B, T, 4, n, D)
        x = x.reshape(b, x.shape[1], -1, self.dim)  # (B, T, 4n, D)
        return x if self.frame_pos is None else x + self.frame_pos


def conv2d_same(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Conv2d with TF/flax "SAME" padding (the extra row/column goes at the end), x (N, C, H, W)."""
    pads = []
    for size, k, s in zip(x.shape[-2:], conv.kernel_size, conv.stride, strict=True):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    x = F.pad(x, (*pads[1], *pads[0]))
    return F.conv2d(x, conv.weight, conv.bias, conv.stride)


class PoseGuider(nn.Module):
    """(B, F, h*s, w*s, K) heatmaps -> (B, T, h, w, (2*window+1) * out_channels) pose features."""

    def __init__(
        self, pose_channels: int, channels: tuple[int, ...], out_channels: int, scale: int, window: int
    ):
        super().__init__()
        n_down = int(round(math.log2(scale)))
        if 2**n_down != scale:
            raise ValueError(f"pose_heatmap_scale={scale} must be a power of 2")
        self.window = window
        self.conv_in = nn.Conv2d(VAE_TEMPORAL * pose_channels, channels[0], 3)
        chans = [channels[min(i + 1, len(channels) - 1)] for i in range(n_down)]
        ins = [channels[0], *chans[:-1]]
        self.down = nn.ModuleList([nn.Conv2d(i, o, 3, stride=2) for i, o in zip(ins, chans, strict=True)])
        self.conv_out = nn.Conv2d(chans[-1] if chans else channels[0], out_channels, 1)

    def forward(self, heatmaps: Tensor) -> Tensor:
        b = heatmaps.shape[0]
        x = group_video_frames(heatmaps)  # (B, T, 4, Hs, Ws, K)
        t, _, hs, ws, k = x.shape[1:]
        x = x.movedim(2, -2).reshape(b * t, hs, ws, VAE_TEMPORAL * k).permute(0, 3, 1, 2)
        x = F.silu(conv2d_same(self.conv_in, x))
        for conv in self.down:
            x = F.silu(conv2d_same(conv, x))
        x = conv2d_same(self.conv_out, x).permute(0, 2, 3, 1)
        return temporal_neighbours(x.reshape(b, t, *x.shape[1:]), self.window)


def temporal_neighbours(x: Tensor, k: int) -> Tensor:
    """(B, T, h, w, C) -> (B, T, h, w, (2k+1) C): latent frames t-k..t+k, zeros past the ends."""
    if k == 0:
        return x
    t = x.shape[1]
    pad = torch.zeros_like(x[:, :k])
    padded = torch.cat([pad, x, pad], dim=1)
    return torch.cat([padded[:, i : i + t] for i in range(2 * k + 1)], dim=-1)


def motion_channels(motion_latents: Tensor, motion_mask: Tensor, hold: bool = False) -> Tensor:
    """Motion-frame latents plus a mask channel, as `omnihuman_jax.models.conditions.motion_channels`."""
    m = motion_mask.to(motion_latents.dtype)[:, :, None, None, None]
    mask_ch = m.expand(*motion_latents.shape[:-1], 1)
    latents = motion_latents * m
    if hold:
        n = motion_mask.to(torch.long).sum(dim=1)  # (B,)
        idx = (n - 1).clamp(min=0)[:, None, None, None, None].expand(-1, 1, *latents.shape[2:])
        last = torch.gather(latents, 1, idx) * (n > 0).to(latents.dtype)[:, None, None, None, None]
        latents = torch.where(m > 0, latents, last)
    return torch.cat([latents, mask_ch], dim=-1)
