"""Analytic FLOP count of the OmniHuman DiT, for MFU (as MaxText counts: 2 FLOPs per multiply-add).

Training costs 3x the forward pass (forward, plus backward through activations and weights). Remat
recomputation is not counted: MFU measures useful model FLOPs.
"""

from __future__ import annotations

import math
from typing import Any


def _attention(sq: int, sk: int, d: int) -> int:
    return 4 * sq * sk * d  # QK^T and PV


def forward_flops_per_sample(
    model: Any, shape: Any, *, audio: bool = True, pose: bool = True, reference: bool = True
) -> int:
    """Forward FLOPs of one sample.

    audio / pose False: the model built with use_audio / use_pose False. reference False also drops the
    motion-frame channels: all three False count a plain HunyuanVideo transformer at this shape.
    """
    m, s = model, shape
    d, p = m.hidden_size, m.patch_size
    mlp = int(d * m.mlp_ratio)
    t, hw = s.latent_frames, (s.latent_height // p) * (s.latent_width // p)
    sv, sr, tl = t * hw, (hw if reference else 0), s.text_len
    seq = sv + sr + tl
    f = 1 + 4 * (t - 1)
    n_audio = 4 * m.audio_tokens_per_frame
    pose_ch = m.pose_feature_channels * (2 * m.pose_window + 1) if pose else 0
    motion_ch = m.latent_channels + 1 if reference else 0  # motion-frame latents and their mask
    cond_ch = motion_ch + pose_ch

    embed = 2 * sv * p * p * (m.latent_channels + cond_ch) * d + 2 * sr * p * p * m.latent_channels * d
    head = 2 * sv * d * p * p * m.latent_channels
    refiner = 2 * tl * m.text_dim * d + m.num_refiner_blocks * (
        2 * tl * d * 3 * d + _attention(tl, tl, d) + 2 * tl * d * d + 2 * tl * d * 4 * d * 2
    )
    audio_proj = (
        2
        * f
        * (
            (2 * m.audio_window + 1) * m.audio_layers * m.audio_dim * m.audio_hidden
            + m.audio_hidden * m.audio_hidden
            + m.audio_hidden * m.audio_tokens_per_frame * d
        )
    )
    audio_xattn = 2 * sv * d * d * 2 + 2 * t * n_audio * d * 2 * d + _attention(sv, n_audio, d)
    if not audio:
        audio_proj = audio_xattn = 0
    hs, ws = s.latent_height * m.pose_heatmap_scale, s.latent_width * m.pose_heatmap_scale
    ch = m.pose_guider_channels
    pose_guider = 2 * t * hs * ws * 9 * 4 * m.pose_channels * ch[0] if pose else 0
    for i in range(int(round(math.log2(m.pose_heatmap_scale))) if pose else 0):
        cin, cout = ch[min(i, len(ch) - 1)], ch[min(i + 1, len(ch) - 1)]
        pose_guider += 2 * t * (hs >> (i + 1)) * (ws >> (i + 1)) * 9 * cin * cout
    dual = (
        2 * seq * d * 3 * d + _attention(seq, seq, d) + 2 * seq * d * d + 2 * seq * d * mlp * 2 + audio_xattn
    )
    single = 2 * seq * d * (3 * d + mlp) + _attention(seq, seq, d) + 2 * seq * (d + mlp) * d + audio_xattn
    return int(
        embed
        + head
        + refiner
        + audio_proj
        + pose_guider
        + m.num_dual_blocks * dual
        + m.num_single_blocks * single
    )


def train_flops_per_step(config: Any, batch_size: int, **parts: bool) -> int:
    """3x the forward FLOPs; `parts` as forward_flops_per_sample's."""
    return 3 * batch_size * forward_flops_per_sample(config.model, config.shape, **parts)


def tokens_per_sample(config: Any) -> int:
    s, p = config.shape, config.model.patch_size
    return s.latent_frames * (s.latent_height // p) * (s.latent_width // p)
