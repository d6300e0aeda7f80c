"""Model presets, from tiny (CPU tests) to multi-billion. Plain data only.

Shapes follow HunyuanVideo's public MMDiT (see ../shared/notes/peers.md): dual-stream blocks, then
single-stream blocks, patch (1, 2, 2), 3D RoPE split over (t, h, w), QK RMSNorm and a text token refiner.
"""

from __future__ import annotations

# Condition encoders of the large presets: wav2vec2-base's 13 hidden states x 768, a +/-2 frame window,
# 8 audio tokens per video frame (32 per latent frame, as MultiTalk), heatmaps at 1/2 image resolution.
_LARGE_CONDITIONS = dict(
    audio_layers=13,
    audio_dim=768,
    audio_hidden=1024,
    audio_window=2,
    audio_tokens_per_frame=8,
    pose_channels=21,
    pose_heatmap_scale=4,
    pose_guider_channels=(32, 64),
    pose_feature_channels=16,
)

# Each preset sets model fields and the latent/video shape it is meant for.
# Under 5M parameters: unit tests (and the base of the toy world's model).
_TINY = dict(
    model=dict(
        hidden_size=64,
        num_heads=2,
        num_dual_blocks=1,
        num_single_blocks=1,
        num_refiner_blocks=1,
        latent_channels=4,
        text_dim=32,
        rope_axes_dim=(8, 12, 12),
        audio_layers=2,
        audio_dim=16,
        audio_hidden=64,
        audio_window=1,
        audio_tokens_per_frame=1,
        pose_channels=21,
        pose_heatmap_scale=2,
        pose_guider_channels=(8, 16),
        pose_feature_channels=4,
    ),
    shape=dict(latent_frames=3, latent_height=8, latent_width=8, text_len=8),
)

PRESETS: dict[str, dict] = {
    "tiny": _TINY,
    # The toy world's model (configs/toyworld.py): tiny, wider and deeper. Its VAE compresses 4x
    # spatially (16 x 16 latents for a 64 x 64 clip, so the mouth and hands, a few pixels wide, keep their
    # own latent pixels) and the DiT patchifies 2 x 2, so each 8 x 8-pixel patch is one token, as with the
    # usual 8x VAE and patch 1. 16 latent channels, as HunyuanVideo's and Wan's VAEs have.
    "toy": dict(
        model=dict(
            _TINY["model"],
            hidden_size=128,
            num_heads=4,
            num_dual_blocks=2,
            num_single_blocks=2,
            patch_size=2,
            latent_channels=16,
            audio_hidden=128,
            pose_guider_channels=(16, 32),
            pose_feature_channels=8,
        ),
        shape=dict(_TINY["shape"], latent_height=16, latent_width=16),
    ),
    # The CPU benchmark shape, matched to the diffusers HunyuanVideo model in benchmarks/.
    "small": dict(
        model=dict(
            hidden_size=512,
            num_heads=8,
            num_dual_blocks=4,
            num_single_blocks=4,
            num_refiner_blocks=1,
            latent_channels=16,
            text_dim=256,
            rope_axes_dim=(16, 24, 24),
            audio_layers=4,
            audio_dim=64,
            audio_hidden=256,
            audio_window=2,
            audio_tokens_per_frame=2,
            pose_channels=21,
            pose_heatmap_scale=2,
            pose_guider_channels=(16, 32),
            pose_feature_channels=8,
        ),
        shape=dict(latent_frames=5, latent_height=32, latent_width=32, text_len=64),
    ),
    "1b": dict(
        model=dict(
            hidden_size=1536,
            num_heads=12,
            num_dual_blocks=10,
            num_single_blocks=20,
            num_refiner_blocks=2,
            latent_channels=16,
            text_dim=4096,
            rope_axes_dim=(16, 56, 56),
            audio_layers=13,
            audio_dim=768,
            audio_hidden=768,
            audio_window=2,
            audio_tokens_per_frame=8,
            pose_channels=21,
            pose_heatmap_scale=4,
            pose_guider_channels=(32, 64),
            pose_feature_channels=16,
        ),
        shape=dict(latent_frames=16, latent_height=32, latent_width=128, text_len=256),
    ),
    "7b": dict(
        model=dict(
            hidden_size=3072,
            num_heads=24,
            num_dual_blocks=16,
            num_single_blocks=32,
            num_refiner_blocks=2,
            latent_channels=16,
            text_dim=4096,
            rope_axes_dim=(16, 56, 56),
            **_LARGE_CONDITIONS,
        ),
        shape=dict(latent_frames=31, latent_height=60, latent_width=104, text_len=256),
    ),
    # HunyuanVideo's public dimensions (13B): 20 dual + 40 single blocks, hidden 3072, 24 heads.
    "hunyuanvideo": dict(
        model=dict(
            hidden_size=3072,
            num_heads=24,
            num_dual_blocks=20,
            num_single_blocks=40,
            num_refiner_blocks=2,
            latent_channels=16,
            text_dim=4096,
            pooled_text_dim=768,
            guidance_embeds=True,
            rope_axes_dim=(16, 56, 56),
            **_LARGE_CONDITIONS,
        ),
        shape=dict(latent_frames=31, latent_height=60, latent_width=104, text_len=256),
    ),
}
