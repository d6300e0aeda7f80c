"""Tests of the PyTorch / diffusers interop (omnihuman_jax/interop)."""

# A tiny diffusers HunyuanVideoTransformer3DModel config matching our tiny preset: hidden 64 (2 heads x 32),
# 1 dual + 1 single + 1 refiner block, text_dim 32, RoPE bands (8, 12, 12), 4 latent channels.
DIFFUSERS_TINY_HUNYUAN = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=32,
    num_layers=1,
    num_single_layers=1,
    num_refiner_layers=1,
    text_embed_dim=32,
    pooled_projection_dim=16,
    rope_axes_dim=(8, 12, 12),
    guidance_embeds=False,
)
