"""Training losses of the causal 3D VAE (OmniHuman-1 section 3 uses a HunyuanVideo-style KL video VAE).

Pure jnp functions on channels-last arrays: L1 + SSIM reconstruction (SSIM of Wang et al. 2004 with an
11-tap Gaussian window, sigma 1.5) and the KL divergence of the diagonal Gaussian posterior to N(0, I).
Video (B, F, H, W, C) is treated as B * F images, except by the optional motion-weighted L1, which weights
each pixel by how much the target changes there between frames. Talking-head motion (mouth, hands) covers
well under 1% of the pixels, so the plain L1 barely sees it; this term is normalised by the weights' sum,
so it counts the moving pixels as much as the plain L1 counts the whole frame. The optional region-weighted
L1 does the same for a given weight map: boxes around the mouth and hand landmarks, which a lossy VAE
otherwise blurs away (docs/learning_proof_history.md, session 12). The optional temporal-difference L1
compares the frame-to-frame changes of reconstruction and target over that region: a 4x causal VAE that
gives back one mouth per latent frame (the mean of its 4 video frames) pays little plain L1 for it, but
its changes inside the group are zero (docs/learning_proof_history.md, session 17).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l1_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean absolute error over all elements."""
    return jnp.mean(jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def motion_weighted_l1(pred: jax.Array, target: jax.Array, eps: float = 1e-6) -> jax.Array:
    """L1 weighted by the target's frame-to-frame change: (B, F, H, W, C) -> (). 0 for single frames.

    A pixel of frame f weighs max(|x_f - x_{f-1}|, |x_{f+1} - x_f|) (channel mean), so both the frame a
    motion leaves and the frame it reaches count; the result is the weighted mean absolute error.
    """
    if target.ndim != 5 or target.shape[1] < 2:
        return jnp.zeros((), jnp.float32)
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    change = jnp.abs(jnp.diff(target, axis=1)).mean(axis=-1, keepdims=True)  # (B, F-1, H, W, 1)
    zero = jnp.zeros_like(change[:, :1])
    weight = jnp.maximum(  # (B, F, H, W, 1)
        jnp.concatenate([zero, change], axis=1), jnp.concatenate([change, zero], axis=1)
    )
    err = jnp.abs(pred - target).mean(axis=-1, keepdims=True)  # (B, F, H, W, 1)
    return jnp.sum(weight * err) / (jnp.sum(weight) + eps)


def region_weighted_l1(pred: jax.Array, target: jax.Array, region: jax.Array, eps: float = 1e-6) -> jax.Array:
    """L1 over a weight map (B, F, H, W) in [0, 1], e.g. landmark boxes of the mouth and hands: -> ().

    Normalised by the weights' sum like `motion_weighted_l1`, so the region counts as much as the whole
    frame does in the plain L1, however few pixels it covers; 0 when the map is empty.
    """
    w = region.astype(jnp.float32)[..., None]  # (B, F, H, W, 1)
    err = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)).mean(axis=-1, keepdims=True)
    return jnp.sum(w * err) / (jnp.sum(w) + eps)


def temporal_region_l1(pred: jax.Array, target: jax.Array, region: jax.Array, eps: float = 1e-6) -> jax.Array:
    """L1 of the frame-to-frame changes, (B, F, H, W, C) each, over a region (B, F, H, W): -> ().

    The change from frame f-1 to f weighs max(region_{f-1}, region_f) per pixel, normalised by the weights'
    sum like `region_weighted_l1`; 0 for single frames or an empty region.
    """
    if target.ndim != 5 or target.shape[1] < 2:
        return jnp.zeros((), jnp.float32)
    dp = jnp.diff(pred.astype(jnp.float32), axis=1)  # (B, F-1, H, W, C)
    dt = jnp.diff(target.astype(jnp.float32), axis=1)
    r = region.astype(jnp.float32)
    w = jnp.maximum(r[:, 1:], r[:, :-1])[..., None]  # (B, F-1, H, W, 1)
    return jnp.sum(w * jnp.abs(dp - dt).mean(axis=-1, keepdims=True)) / (jnp.sum(w) + eps)


def _gaussian_window(size: int, sigma: float) -> jax.Array:
    x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
    w = jnp.exp(-0.5 * jnp.square(x / sigma))
    return w / w.sum()  # (size,)


def _blur(x: jax.Array, window: jax.Array) -> jax.Array:
    """Separable 'valid' Gaussian filter of each channel: (N, H, W, C) -> (N, H - k + 1, W - k + 1, C).

    Channels are folded into the batch for single-channel convolutions: XLA:CPU runs those through its
    fast path, while grouped (depthwise) convolutions take a slow generic loop.
    """
    n, h, w, c = x.shape
    k = window.shape[0]
    dn = ("NHWC", "HWIO", "NHWC")
    x = x.transpose(0, 3, 1, 2).reshape(n * c, h, w, 1)  # (N C, H, W, 1)
    x = jax.lax.conv_general_dilated(x, window.reshape(k, 1, 1, 1), (1, 1), "VALID", dimension_numbers=dn)
    x = jax.lax.conv_general_dilated(x, window.reshape(1, k, 1, 1), (1, 1), "VALID", dimension_numbers=dn)
    return x.reshape(n, c, h - k + 1, w - k + 1).transpose(0, 2, 3, 1)  # (N, H', W', C)


def ssim(
    pred: jax.Array,
    target: jax.Array,
    *,
    max_val: float = 2.0,
    filter_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> jax.Array:
    """Mean SSIM per image: (..., H, W, C) -> (...). `max_val` is the data range (2 for [-1, 1])."""
    if pred.shape != target.shape:
        raise ValueError(f"ssim: pred {pred.shape} and target {target.shape} differ")
    lead, (h, w, c) = pred.shape[:-3], pred.shape[-3:]
    size = min(filter_size, h, w)
    size -= 1 - size % 2  # keep the window odd
    window = _gaussian_window(size, sigma)
    x = pred.astype(jnp.float32).reshape(-1, h, w, c)  # (N, H, W, C)
    y = target.astype(jnp.float32).reshape(-1, h, w, c)
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    var_x = _blur(x * x, window) - mu_x * mu_x
    var_y = _blur(y * y, window) - mu_y * mu_y
    cov = _blur(x * y, window) - mu_x * mu_y
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(axis=(1, 2, 3)).reshape(lead)


def ssim_loss(pred: jax.Array, target: jax.Array, **kwargs: float) -> jax.Array:
    """1 - mean SSIM over all images of the batch."""
    return 1.0 - jnp.mean(ssim(pred, target, **kwargs))


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over all but the batch axis: (B, ...) -> (B,)."""
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return kl.reshape(kl.shape[0], -1).sum(axis=1)


def vae_loss(
    pred: jax.Array,
    target: jax.Array,
    mean: jax.Array,
    logvar: jax.Array,
    *,
    l1_weight: float = 1.0,
    ssim_weight: float = 0.2,
    kl_weight: float = 1e-6,
    motion_l1_weight: float = 0.0,
    region: jax.Array | None = None,
    region_l1_weight: float = 0.0,
    temporal_l1_weight: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted L1 (element mean) + (1 - SSIM) + KL (per-sample sum, batch mean) + motion-weighted L1
    + region-weighted L1 over `region` (B, F, H, W) + the temporal-difference L1 over `region`.

    Returns (loss, parts); the motion, region and temporal terms are computed and reported only when their
    weights are non-zero (the region and temporal terms need `region`).
    """
    parts = {
        "l1": l1_loss(pred, target),
        "ssim": ssim_loss(pred, target),
        "kl": jnp.mean(kl_divergence(mean, logvar)),
    }
    loss = l1_weight * parts["l1"] + ssim_weight * parts["ssim"] + kl_weight * parts["kl"]
    if motion_l1_weight:
        parts["motion_l1"] = motion_weighted_l1(pred, target)
        loss = loss + motion_l1_weight * parts["motion_l1"]
    if region_l1_weight:
        if region is None:
            raise ValueError("region_l1_weight > 0 needs a region map (B, F, H, W)")
        parts["region_l1"] = region_weighted_l1(pred, target, region)
        loss = loss + region_l1_weight * parts["region_l1"]
    if temporal_l1_weight:
        if region is None:
            raise ValueError("temporal_l1_weight > 0 needs a region map (B, F, H, W)")
        parts["temporal_l1"] = temporal_region_l1(pred, target, region)
        loss = loss + temporal_l1_weight * parts["temporal_l1"]
    return loss, parts
