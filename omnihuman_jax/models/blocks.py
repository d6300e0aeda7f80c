"""MMDiT blocks: dual-stream and single-stream, as in HunyuanVideo, plus OmniHuman's audio injection.

- Dual-stream block (diffusers `HunyuanVideoTransformerBlock`): the latent stream (video + reference
  tokens) and the text stream keep separate adaLN-Zero modulation, QKV, output projections and MLPs, and
  attend jointly with QK RMSNorm. RoPE rotates the latent stream only.
- Single-stream block (`HunyuanVideoSingleTransformerBlock`): one set of weights over the joint sequence,
  attention and MLP computed in parallel from one modulated input.
- OmniHuman section 3.2 injects audio into each block through cross-attention; here every block, dual and
  single, ends its attention step with a frame-local audio cross-attention on the video tokens. An optional
  audio gate confines that update to a region of each frame (the mouth or face), as HunyuanVideo-Avatar's
  face-aware audio adapter masks its audio cross-attention.

Both blocks share one signature, `(carry, temb, key_mask, cos, sin, audio_tokens, audio_gate) -> (carry,
None)` with
`carry = (latent_stream, text_stream)`, so a stack of them can run under `nn.scan`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnihuman_jax.models.attention import AudioCrossAttention, QKVProjection, dot_product_attention
from omnihuman_jax.models.layers import FeedForward, dense, layer_norm, modulate
from omnihuman_jax.models.rope import apply_rope

Carry = tuple[jax.Array, jax.Array]


class BlockConfig(nn.Module):
    """Fields shared by both block kinds (a mixin, never instantiated on its own)."""

    hidden_size: int
    num_heads: int
    mlp_ratio: float
    num_video_tokens: int  # video tokens at the head of the latent stream; the reference follows
    use_audio: bool
    backend: str = "xla"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @property
    def kw(self) -> dict:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def add_audio(
        self, latent: jax.Array, audio_tokens: jax.Array | None, audio_gate: jax.Array | None
    ) -> jax.Array:
        """Adds the frame-local audio cross-attention update to the video tokens of `latent`.

        `audio_gate` (B, N_video) in [0, 1], when given, scales each video token's update (the audio region).
        """
        if not self.use_audio:
            return latent
        nv = self.num_video_tokens
        xattn = AudioCrossAttention(
            self.hidden_size, self.num_heads, self.backend, name="audio_attn", **self.kw
        )
        video = latent[:, :nv]
        update = xattn(video, audio_tokens)  # (B, N_video, D)
        if audio_gate is not None:
            update = update * audio_gate[:, :, None].astype(update.dtype)
        video = video + update
        return jnp.concatenate([video, latent[:, nv:]], axis=1)


def _act(x: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))


class DualStreamBlock(BlockConfig):
    @nn.compact
    def __call__(
        self, carry: Carry, temb, key_mask, cos, sin, audio_tokens, audio_gate
    ) -> tuple[Carry, None]:
        x, c = carry  # (B, Sx, D), (B, L, D)
        d = self.hidden_size
        mod = dense(6 * d, ("embed", "null"), name="norm1", **self.kw)(nn.silu(temb))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
        cmod = dense(6 * d, ("embed", "null"), name="norm1_context", **self.kw)(nn.silu(temb))
        c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = jnp.split(
            cmod, 6, axis=-1
        )

        nx = modulate(layer_norm(dtype=self.dtype)(x), shift_msa, scale_msa)
        nc = modulate(layer_norm(dtype=self.dtype)(c), c_shift_msa, c_scale_msa)
        q, k, v = QKVProjection(d, self.num_heads, "to", name="attn", **self.kw)(nx)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        cq, ck, cv = QKVProjection(d, self.num_heads, "add", name="attn_context", **self.kw)(nc)
        joint = [jnp.concatenate(pair, axis=1) for pair in ((q, cq), (k, ck), (v, cv))]
        out = dot_product_attention(*joint, key_mask, self.backend)  # (B, Sx + L, H, Dh)
        out = out.reshape(*out.shape[:2], d)
        sx = x.shape[1]
        x = x + dense(d, ("heads", "embed"), name="to_out", **self.kw)(out[:, :sx]) * gate_msa[:, None]
        c = c + dense(d, ("heads", "embed"), name="to_add_out", **self.kw)(out[:, sx:]) * c_gate_msa[:, None]
        x = _act(self.add_audio(x, audio_tokens, audio_gate))

        mlp_dim = int(d * self.mlp_ratio)
        nx = modulate(layer_norm(dtype=self.dtype)(x), shift_mlp, scale_mlp)
        nc = modulate(layer_norm(dtype=self.dtype)(c), c_shift_mlp, c_scale_mlp)
        x = x + FeedForward(d, mlp_dim, name="ff", **self.kw)(nx) * gate_mlp[:, None]
        c = c + FeedForward(d, mlp_dim, name="ff_context", **self.kw)(nc) * c_gate_mlp[:, None]
        return (_act(x), c), None


class SingleStreamBlock(BlockConfig):
    @nn.compact
    def __call__(
        self, carry: Carry, temb, key_mask, cos, sin, audio_tokens, audio_gate
    ) -> tuple[Carry, None]:
        x, c = carry
        d, sx = self.hidden_size, x.shape[1]
        h = jnp.concatenate([x, c], axis=1)  # (B, Sx + L, D)
        shift, scale, gate = jnp.split(
            dense(3 * d, ("embed", "null"), name="norm", **self.kw)(nn.silu(temb)), 3, -1
        )
        nh = modulate(layer_norm(dtype=self.dtype)(h), shift, scale)
        mlp = nn.gelu(dense(int(d * self.mlp_ratio), ("embed", "mlp"), name="proj_mlp", **self.kw)(nh), True)
        mlp = nn.with_logical_constraint(mlp, ("act_batch", "act_length", "act_mlp"))
        q, k, v = QKVProjection(d, self.num_heads, "to", name="attn", **self.kw)(nh)
        q = jnp.concatenate([apply_rope(q[:, :sx], cos, sin), q[:, sx:]], axis=1)
        k = jnp.concatenate([apply_rope(k[:, :sx], cos, sin), k[:, sx:]], axis=1)
        out = dot_product_attention(q, k, v, key_mask, self.backend)
        out = out.reshape(*out.shape[:2], d)
        proj = dense(d, ("mlp", "embed"), name="proj_out", **self.kw)(jnp.concatenate([out, mlp], axis=-1))
        h = h + proj * gate[:, None]
        x, c = h[:, :sx], h[:, sx:]
        x = _act(self.add_audio(x, audio_tokens, audio_gate))
        return (x, c), None
