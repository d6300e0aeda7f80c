"""Parity of the JAX causal 3D VAE with diffusers' `AutoencoderKLHunyuanVideo` (the oracle), fp32 on CPU.

A tiny random diffusers model (4 blocks: the HunyuanVideo down/up layout, mid-block attention on) is saved
with `save_pretrained`, read with `load_vae`, and both sides run the same clips. diffusers' own temporal and
spatial tiling are switched off so the oracle is the plain full-tensor computation.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from omnihuman_jax.interop import load_vae, save_vae  # noqa: E402
from omnihuman_jax.models import vae as V  # noqa: E402

TOL = 1e-4


def _oracle(model):
    model.eval()
    model.use_framewise_encoding = False
    model.use_framewise_decoding = False
    model.disable_tiling()
    return model


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch.manual_seed(0)
    model = diffusers.AutoencoderKLHunyuanVideo(
        latent_channels=4, block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4
    )
    with torch.no_grad():  # non-trivial norm affine parameters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("ref_vae")
    model.save_pretrained(folder)
    cfg, params = load_vae(folder)
    return _oracle(model), cfg, params


def _to_torch(x: np.ndarray) -> torch.Tensor:  # (B, F, H, W, C) -> (B, C, F, H, W)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 4, 1, 2, 3)


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 4, 1).numpy()


def _clip(frames: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).uniform(-1, 1, (1, frames, 32, 32, 3)).astype(np.float32)


def _assert_close(ours, ref, what: str) -> None:
    err = float(np.max(np.abs(np.asarray(ours) - ref)))
    assert err < TOL, f"{what}: max abs error {err:.3g} vs diffusers (tolerance {TOL})"


@pytest.mark.parametrize("frames", [1, 9])
def test_encode_and_decode_vs_reference(reference, frames):
    model, cfg, params = reference
    x = _clip(frames, seed=frames)
    with torch.no_grad():
        posterior = model.encode(_to_torch(x)).latent_dist
        mean_ref, logvar_ref = _to_numpy(posterior.mean), _to_numpy(posterior.logvar)
        decoded_ref = _to_numpy(model.decode(posterior.mean).sample)
    mean, logvar = V.encode_moments(cfg, params, x)
    assert mean.shape == mean_ref.shape == (1, 1 + (frames - 1) // 4, 4, 4, 4)
    _assert_close(mean, mean_ref, f"encode mean ({frames} frames)")
    _assert_close(logvar, logvar_ref, f"encode logvar ({frames} frames)")
    _assert_close(V.encode_video(cfg, params, x), mean_ref * cfg.scaling_factor, "scaled latents")
    decoded = V.decode_unscaled(cfg, params, mean_ref)
    assert decoded.shape == decoded_ref.shape == x.shape
    _assert_close(decoded, decoded_ref, f"decode ({frames} frames)")


def test_chunked_encode_and_decode_vs_reference(reference):
    model, cfg, params = reference
    x = _clip(9, seed=3)
    with torch.no_grad():
        mean_ref = model.encode(_to_torch(x)).latent_dist.mean
        decoded_ref = _to_numpy(model.decode(mean_ref).sample)
    mean_ref = _to_numpy(mean_ref)
    mean, _ = V.encode_moments(cfg, params, x, chunk_frames=4)  # chunks of (5, 4) frames
    _assert_close(mean, mean_ref, "chunked encode mean")
    decoded = V.decode_unscaled(cfg, params, mean_ref, chunk_frames=1)  # chunks of (2, 1) latent frames
    _assert_close(decoded, decoded_ref, "chunked decode")


def test_save_vae_loads_in_diffusers_with_same_outputs_vs_reference(reference, tmp_path):
    model, cfg, params = reference
    save_vae(tmp_path / "ours", cfg, params)
    reloaded = _oracle(diffusers.AutoencoderKLHunyuanVideo.from_pretrained(tmp_path / "ours"))
    assert tuple(reloaded.config.block_out_channels) == (8, 16, 16, 16)
    x = _clip(5, seed=5)
    with torch.no_grad():
        a = model.encode(_to_torch(x)).latent_dist.mean
        b = reloaded.encode(_to_torch(x)).latent_dist.mean
        decoded_a, decoded_b = model.decode(a).sample, reloaded.decode(a).sample
    _assert_close(_to_numpy(b), _to_numpy(a), "from_pretrained(save_vae) encode")
    _assert_close(_to_numpy(decoded_b), _to_numpy(decoded_a), "from_pretrained(save_vae) decode")
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(reloaded.state_dict()[name].numpy(), tensor.numpy(), err_msg=name)
