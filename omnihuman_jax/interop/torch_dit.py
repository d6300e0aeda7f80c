"""The OmniHuman DiT in plain PyTorch (OmniHuman-1, sections 3.2 and 3.4), for serving without JAX.

Loads the export of `launch/export_torch.py` (`config.json` + `model.safetensors` or a sharded
`model.safetensors.index.json`) with `load_state_dict(strict=True)`:

    model = OmniHumanDiTTorch.from_pretrained("export_dir").eval()
    velocity = model(inputs, t)                       # the same inputs dict as the JAX model
    latents = sample_euler_cfg(model, inputs, noise)  # Euler steps, text + audio CFG with annealing

Every condition pathway of the JAX model is here: text through the token refiner and the text stream;
reference tokens packed after the video tokens with zero temporal RoPE (masked out of attention keys when
dropped); frame-local audio cross-attention in every block; pose-guider features and motion latents + mask
stacked on the noisy latent. Dropped conditions get the null inputs of `omnihuman_jax/conditions.py`.
Depends on torch and safetensors only.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from omnihuman_jax.interop.torch_blocks import (
    AudioProjector,
    DualStreamBlock,
    PoseGuider,
    SingleStreamBlock,
    TextTokenRefiner,
    TimeTextEmbed,
    layer_norm,
    motion_channels,
    rope_cos_sin,
    timestep_sinusoid,
    video_and_reference_positions,
)

CONDITIONS = ("text", "reference", "audio", "pose", "motion")
TIMESTEP_SCALE = 1000.0  # network timestep = 1000 * flow time
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class TorchDiTConfig:
    """The fields of the JAX `DiTConfig` that shape the network (compute settings are left out)."""

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
    use_audio: bool = True
    use_pose: bool = True
    motion_hold: bool = False
    audio_gate: bool = False  # the audio update only in `inputs["audio_region"]`, as the JAX model
    audio_frame_pos: bool = False  # a learned embedding per audio-token slot of a latent frame

    @classmethod
    def from_dict(cls, values: dict) -> TorchDiTConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(values))
        if missing:
            raise ValueError(f"DiT config lacks the fields {missing}")
        kept = {k: v for k, v in values.items() if k in names}
        for key in ("rope_axes_dim", "pose_guider_channels"):
            kept[key] = tuple(kept[key])
        return cls(**kept)

    @property
    def cond_channels(self) -> int:
        pose = self.pose_feature_channels * (2 * self.pose_window + 1) if self.use_pose else 0
        return self.latent_channels + 1 + pose


def apply_condition_mask(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Null inputs for dropped conditions, as `omnihuman_jax.conditions.apply_condition_mask`."""
    m = inputs["condition_mask"].bool()
    on = {name: m[:, i] for i, name in enumerate(CONDITIONS)}
    out = dict(inputs)

    def keep(flag: Tensor, x: Tensor) -> Tensor:
        return torch.where(flag.reshape(-1, *([1] * (x.ndim - 1))), x, torch.zeros_like(x))

    out["text_emb"] = keep(on["text"], inputs["text_emb"])
    null_mask = torch.zeros_like(inputs["text_mask"], dtype=torch.bool)
    null_mask[:, 0] = True
    out["text_mask"] = torch.where(on["text"][:, None], inputs["text_mask"].bool(), null_mask)
    if "text_pooled" in inputs:
        out["text_pooled"] = keep(on["text"], inputs["text_pooled"])
    out["audio_feats"] = keep(on["audio"], inputs["audio_feats"])
    out["pose_heatmaps"] = keep(on["pose"], inputs["pose_heatmaps"])
    out["motion_mask"] = inputs["motion_mask"].bool() & on["motion"][:, None]
    out["reference_active"] = on["reference"]
    return out


class PatchEmbed(nn.Module):
    """diffusers `HunyuanVideoPatchEmbed`: a Conv3d with kernel = stride = (1, p, p)."""

    def __init__(self, in_channels: int, dim: int, p: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, (1, p, p), stride=(1, p, p), bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, H, W, C) -> (B, T*(H/p)*(W/p), D) tokens in t-major order."""
        return self.proj(x.permute(0, 4, 1, 2, 3)).flatten(2).transpose(1, 2)


class OmniHumanDiTTorch(nn.Module):
    def __init__(self, config: TorchDiTConfig):
        super().__init__()
        c = self.config = config
        d, p = c.hidden_size, c.patch_size
        self.x_embedder = PatchEmbed(c.latent_channels, d, p)
        self.cond_embedder = PatchEmbed(c.cond_channels, d, p, bias=False)
        self.time_text_embed = TimeTextEmbed(d, c.pooled_text_dim, c.guidance_embeds)
        self.context_embedder = TextTokenRefiner(
            c.text_dim, d, c.num_heads, c.num_refiner_blocks, c.mlp_ratio
        )
        if c.use_audio:
            self.audio_projector = AudioProjector(
                (2 * c.audio_window + 1) * c.audio_layers * c.audio_dim,
                c.audio_hidden,
                d,
                c.audio_window,
                c.audio_tokens_per_frame,
                c.audio_frame_pos,
            )
        if c.use_pose:
            self.pose_guider = PoseGuider(
                c.pose_channels,
                c.pose_guider_channels,
                c.pose_feature_channels,
                c.pose_heatmap_scale,
                c.pose_window,
            )
        blk = dict(dim=d, heads=c.num_heads, mlp_ratio=c.mlp_ratio, use_audio=c.use_audio)
        self.transformer_blocks = nn.ModuleList([DualStreamBlock(**blk) for _ in range(c.num_dual_blocks)])
        self.single_transformer_blocks = nn.ModuleList(
            [SingleStreamBlock(**blk) for _ in range(c.num_single_blocks)]
        )
        self.norm_out = nn.Module()
        self.norm_out.linear = nn.Linear(d, 2 * d)
        self.proj_out = nn.Linear(d, p * p * c.latent_channels)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> OmniHumanDiTTorch:
        """Builds the model from `path/config.json` and loads its safetensors weights (strict)."""
        folder = Path(path)
        config_file = folder / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(
                f"{config_file}: not found (is {folder} an export of launch.export_torch?)"
            )
        config = TorchDiTConfig.from_dict(json.loads(config_file.read_text()))
        model = cls(config)
        model.load_state_dict(load_weights(folder), strict=True)
        return model.to(device=device, dtype=dtype)

    def _temb(self, inputs: dict[str, Tensor], t_net: Tensor, dtype: torch.dtype) -> Tensor:
        e = self.time_text_embed
        temb = e.timestep_embedder(timestep_sinusoid(t_net).to(dtype))
        if self.config.pooled_text_dim:
            temb = temb + e.text_embedder(inputs["text_pooled"].to(dtype))
        if self.config.guidance_embeds:
            g = inputs["guidance"].float() * TIMESTEP_SCALE
            temb = temb + e.guidance_embedder(timestep_sinusoid(g).to(dtype))
        return temb

    def forward(self, inputs: dict[str, Tensor], timestep: Tensor) -> Tensor:
        """inputs: the JAX model's inputs dict (channels-last); timestep (B,) flow time in [0, 1].

        Returns the velocity (B, T, h, w, C) in float32.
        """
        c = self.config
        dtype = self.proj_out.weight.dtype
        inputs = apply_condition_mask(inputs)
        x_t = inputs["noisy_latents"].to(dtype)
        b, t, h, w, _ = x_t.shape
        p = c.patch_size
        t_net = timestep.float() * TIMESTEP_SCALE
        temb = self._temb(inputs, t_net, dtype)

        cond = [motion_channels(inputs["motion_latents"].to(dtype), inputs["motion_mask"], c.motion_hold)]
        if c.use_pose:
            cond.append(self.pose_guider(inputs["pose_heatmaps"].to(dtype)))
        video = self.x_embedder(x_t) + self.cond_embedder(torch.cat(cond, dim=-1).to(dtype))
        reference = self.x_embedder(inputs["ref_latents"].to(dtype))  # (B, hw, D)
        x = torch.cat([video, reference], dim=1)
        n_video = video.shape[1]

        text = self.context_embedder(inputs["text_emb"].to(dtype), t_net, inputs["text_mask"])
        audio = self.audio_projector(inputs["audio_feats"].to(dtype)) if c.use_audio else None
        gate = None
        if audio is not None and c.audio_gate:  # (B, N_video): a token is in when any of its cells is
            region = inputs["audio_region"].to(dtype).reshape(b, t, h // p, p, w // p, p)
            gate = region.amax(dim=(3, 5)).reshape(b, n_video)

        positions = video_and_reference_positions(t, h // p, w // p, device=x.device)
        cos, sin = rope_cos_sin(positions, c.rope_axes_dim, c.rope_theta)
        ref_valid = inputs["reference_active"][:, None].expand(b, reference.shape[1])
        ones = torch.ones(b, n_video, dtype=torch.bool, device=x.device)
        key_mask = torch.cat([ones, ref_valid, inputs["text_mask"]], dim=1)[:, None, None, :]  # (B, 1, 1, S)

        for blk in [*self.transformer_blocks, *self.single_transformer_blocks]:
            x, text = blk(x, text, temb, key_mask, cos, sin, audio, gate, n_video)
        x = x[:, :n_video]
        scale, shift = self.norm_out.linear(F.silu(temb)).chunk(2, dim=-1)  # scale first, as diffusers
        x = self.proj_out(layer_norm(x) * (1 + scale[:, None]) + shift[:, None])
        # diffusers' unpatchify: features ordered (C, pt, ph, pw)
        x = x.float().reshape(b, t, h // p, w // p, -1, p, p)
        return x.permute(0, 1, 2, 5, 3, 6, 4).reshape(b, t, h, w, -1)


def load_weights(folder: Path) -> dict[str, Tensor]:
    """The state dict of `model.safetensors` or of the shards listed in `model.safetensors.index.json`."""
    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        raise FileNotFoundError(f"{folder}: neither {WEIGHTS_NAME} nor {INDEX_NAME} found")
    state: dict[str, Tensor] = {}
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: weight shard named in {INDEX_NAME} is missing")
        try:
            state.update(load_file(str(file)))
        except Exception as e:  # safetensors raises SafetensorError / OSError for damaged files
            raise ValueError(f"{file}: unreadable safetensors file (truncated or corrupt?): {e}") from e
    return state


GUIDANCE_MODES = {  # branches, uncond first and full last (as `omnihuman_jax.guidance.guidance_mode`)
    "audio": (
        ("reference", "motion"),
        ("text", "reference", "motion"),
        ("text", "reference", "audio", "motion"),
    ),
    "combined": (
        ("reference", "pose", "motion"),
        ("text", "reference", "pose", "motion"),
        ("text", "reference", "audio", "pose", "motion"),
    ),
    "pose": (("reference", "pose", "motion"), ("text", "reference", "pose", "motion")),
    "pose_guided": (  # `guidance_mode("pose", pose_guidance=True)`: s_audio is the pose scale
        ("reference", "motion"),
        ("text", "reference", "motion"),
        ("text", "reference", "pose", "motion"),
    ),
}


def branch_mask(inputs: dict[str, Tensor], active: Sequence[str]) -> Tensor:
    """(B, 5) mask with only `active` on, ANDed with the caller's `condition_mask` when given."""
    b = inputs["noisy_latents"].shape[0]
    on = torch.tensor([name in active for name in CONDITIONS], dtype=torch.bool)
    mask = on[None].expand(b, -1).to(inputs["noisy_latents"].device)
    return mask & inputs["condition_mask"].bool() if "condition_mask" in inputs else mask


def timestep_grid(num_steps: int, shift: float = 1.0) -> list[float]:
    """num_steps + 1 flow times from 1 (noise) to 0 (data), shifted by t' = s t / (1 + (s - 1) t)."""
    if num_steps < 1 or shift <= 0:
        raise ValueError(f"num_steps={num_steps}, shift={shift}: need num_steps >= 1 and shift > 0")
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return [float(v) for v in (shift * t / (1.0 + (shift - 1.0) * t)).float()]


def cfg_schedule(kind: str, start: float, floor: float, num_steps: int) -> list[float]:
    """CFG annealing (section 3.4): per-step scales from `start` down to `floor` (constant|linear|cosine)."""
    floor = min(floor, start)
    u = [i / max(num_steps - 1, 1) for i in range(num_steps)]
    if kind == "constant":
        return [float(start)] * num_steps
    if kind == "linear":
        return [start + (floor - start) * x for x in u]
    if kind == "cosine":
        return [floor + (start - floor) * 0.5 * (1.0 + math.cos(math.pi * x)) for x in u]
    raise ValueError(f"cfg_schedule={kind!r}: choose constant, linear or cosine")


@torch.no_grad()
def guided_velocity(
    model: nn.Module, inputs: dict[str, Tensor], t: Tensor, mode: str, s_text: float, s_audio: float
) -> Tensor:
    """Multi-condition CFG on text and audio (section 3.4), one forward pass per branch.

    Three branches (audio, combined): v = v_u + s_text (v_text - v_u) + s_audio (v_full - v_text);
    two (pose): v = v_u + s_text (v_full - v_u); in `pose_guided` s_audio is the pose scale.
    `inputs["noisy_latents"]` is x_t.
    """
    if mode not in GUIDANCE_MODES:
        raise ValueError(f"guidance mode {mode!r}: choose one of {sorted(GUIDANCE_MODES)}")
    v = [model({**inputs, "condition_mask": branch_mask(inputs, a)}, t) for a in GUIDANCE_MODES[mode]]
    if len(v) == 3:
        return v[0] + s_text * (v[1] - v[0]) + s_audio * (v[2] - v[1])
    return v[0] + s_text * (v[1] - v[0])


def clamp_known(x: Tensor, t: float, noise: Tensor, known: Tensor, known_mask: Tensor) -> Tensor:
    """Puts x_t at known (motion) frames on (1 - t) known + t noise. known_mask (B, T) bool."""
    m = known_mask.bool()[:, :, None, None, None]
    return torch.where(m, (1.0 - t) * known + t * noise, x)


@torch.no_grad()
def euler_step(
    model: nn.Module,
    inputs: dict[str, Tensor],
    x: Tensor,
    t: float,
    t_next: float,
    mode: str,
    s_text,
    s_audio,
) -> Tensor:
    """One guided Euler step of the flow ODE from t to t_next < t: x + (t_next - t) v(x, t)."""
    tb = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
    v = guided_velocity(model, {**inputs, "noisy_latents": x}, tb, mode, s_text, s_audio)
    return x + (t_next - t) * v


@torch.no_grad()
def sample_euler_cfg(
    model: nn.Module,
    inputs: dict[str, Tensor],
    noise: Tensor,
    *,
    num_steps: int = 30,
    shift: float = 1.0,
    mode: str = "audio",
    text_cfg: tuple[float, float] = (5.0, 1.0),
    audio_cfg: tuple[float, float] = (5.0, 1.0),
    schedule: str = "linear",
) -> Tensor:
    """Latents (B, T, h, w, C) from noise (B, T, h, w, C) by guided Euler steps with CFG annealing.

    `text_cfg` / `audio_cfg` are (start, floor) scales. The motion frames (`motion_mask`, with their
    clean latents in `motion_latents`) are known: before every step their x_t is put on the straight line
    (1 - t) x_0 + t noise, as in training, and the result keeps x_0 there.
    """
    ts = timestep_grid(num_steps, shift)
    s_text = cfg_schedule(schedule, *text_cfg, num_steps)
    s_audio = cfg_schedule(schedule, *audio_cfg, num_steps)
    known, known_mask = inputs["motion_latents"].float(), inputs["motion_mask"].bool()
    if "condition_mask" in inputs:  # motion frames count only with the motion condition on
        known_mask = known_mask & inputs["condition_mask"].bool()[:, CONDITIONS.index("motion"), None]
    noise = noise.float()
    x = clamp_known(noise, ts[0], noise, known, known_mask)
    for i in range(num_steps):
        x = euler_step(model, inputs, x, ts[i], ts[i + 1], mode, s_text[i], s_audio[i])
        x = clamp_known(x, ts[i + 1], noise, known, known_mask)
    return x
