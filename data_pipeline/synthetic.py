"""Synthetic training data: the default data source when `config.data.dir` is empty, and record dicts.

`SyntheticSource` follows the data-source API of docs/design.md: process-local numpy batches in the
training-batch format, with per-sample condition masks drawn at the stage's ratios (OmniHuman-1,
section 3.3, via `data_pipeline.masking`). Every sample is a pure function of (seed, global sample index),
so `set_state({"step": k})` resumes exactly. It is cheap: latents, audio and text are small Gaussians;
pose heatmaps, the one large array, come from a bank of two pre-rendered clips rolled in time.

`synthetic_record` builds one valid dataset record (docs/design.md record table) at any tiny shape, for
tests and toy datasets written with `data_pipeline.tfds_builder.write_dataset`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_pipeline import heatmaps, masking, records
from omnihuman_jax.batch import landmark_mask_keys


def local_batch_size(batch_size: int, process_count: int) -> int:
    """Per-process batch of a global batch, with a clear error when it does not divide."""
    if process_count < 1 or batch_size % process_count:
        raise ValueError(
            f"batch_size={batch_size} must be a positive multiple of the process count {process_count}"
        )
    return batch_size // process_count


class SyntheticSource:
    """Random latents and conditions of the shapes in `config.shape` / `config.model`."""

    def __init__(self, config: Any, process_index: int = 0, process_count: int = 1):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} must lie in [0, {process_count})")
        self.seed = int(config.seed)
        self.process_index = process_index
        self.batch_size = int(config.batch_size)
        self.local_batch = local_batch_size(self.batch_size, process_count)
        self.ratios = masking.ratios_vector(config.condition_ratios)
        self.motion_frames = int(config.data.motion_frames)
        m, s = config.model, config.shape
        self.t, self.h, self.w = int(s.latent_frames), int(s.latent_height), int(s.latent_width)
        self.num_frames = 1 + 4 * (self.t - 1)
        self.channels, self.text_len, self.text_dim = int(m.latent_channels), int(s.text_len), int(m.text_dim)
        self.audio_shape = (self.num_frames, int(m.audio_layers), int(m.audio_dim))
        scale = int(m.pose_heatmap_scale)
        self.pose_shape = (self.num_frames, self.h * scale, self.w * scale, int(m.pose_channels))
        self.pooled_dim = int(m.get("pooled_text_dim", 0))
        self.region_masks = landmark_mask_keys(config)
        self.eligible = masking.eligibility(
            text_mask=np.ones(1, bool), audio_eligible=True, pose_eligible=True, latent_frames=self.t
        )
        self.step = 0
        self._pose_bank: np.ndarray | None = None  # (2, F, H', W', K), rendered on first use

    def __iter__(self) -> SyntheticSource:
        return self

    def get_state(self) -> dict[str, int]:
        return {"step": self.step}

    def set_state(self, state: dict[str, Any]) -> None:
        if "step" not in state:
            raise ValueError(f"SyntheticSource state needs a 'step', got {state}")
        self.step = int(state["step"])

    def close(self) -> None:
        self._pose_bank = None

    def _pose_clip(self, rng: np.random.Generator) -> np.ndarray:
        if self._pose_bank is None:
            bank_rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 0x905E])
            f, hh, ww, k = self.pose_shape
            if k == heatmaps.NUM_CHANNELS:
                walk = np.cumsum(bank_rng.normal(0, 0.01, (2, f, heatmaps.NUM_KEYPOINTS, 3)), axis=1)
                kp = (bank_rng.random((2, 1, heatmaps.NUM_KEYPOINTS, 3)) + walk).astype(np.float32)
                kp[..., 2] = np.clip(kp[..., 2], 0, 1)
                self._pose_bank = np.stack([heatmaps.render_heatmaps(c, hh, ww) for c in kp])
            else:  # a custom channel count: no keypoint grouping defined, plain noise in [0, 1)
                self._pose_bank = bank_rng.random((2,) + self.pose_shape, dtype=np.float32)
        clip = self._pose_bank[rng.integers(2)]
        return np.roll(clip, int(rng.integers(self.num_frames)), axis=0)

    def sample(self, sample_index: int) -> dict[str, np.ndarray]:
        """One unbatched sample, a pure function of (seed, sample_index)."""
        rng = masking.sample_rng(self.seed, sample_index, masking.SALT_DATA)
        latents = rng.standard_normal((self.t, self.h, self.w, self.channels), dtype=np.float32)
        ref = int(masking.sample_rng(self.seed, sample_index, masking.SALT_REFERENCE).integers(self.t))
        text_mask = np.zeros(self.text_len, bool)
        text_mask[: int(rng.integers(1, self.text_len + 1))] = True
        mask = masking.sample_condition_mask(self.seed, sample_index, self.ratios, self.eligible)
        out = dict(
            latents=latents,
            ref_latents=latents[ref : ref + 1].copy(),  # (1, h, w, C)
            text_emb=rng.standard_normal((self.text_len, self.text_dim), dtype=np.float32),
            text_mask=text_mask,
            audio_feats=rng.standard_normal(self.audio_shape, dtype=np.float32),
            pose_heatmaps=self._pose_clip(rng) if mask[3] else np.zeros(self.pose_shape, np.float32),
            motion_mask=np.zeros(self.t, bool),
            condition_mask=mask,
        )
        for key in self.region_masks:  # random latents have no landmarks: empty mouth and hand regions
            out[key] = np.zeros((self.t, self.h, self.w), np.float32)
        if self.pooled_dim > 0:
            out["text_pooled"] = rng.standard_normal(self.pooled_dim, dtype=np.float32)
        masking.apply_condition_mask(out, mask, self.motion_frames)
        return out

    def __next__(self) -> dict[str, np.ndarray]:
        first = self.step * self.batch_size + self.process_index * self.local_batch
        samples = [self.sample(first + i) for i in range(self.local_batch)]
        self.step += 1
        return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def synthetic_record(
    rng: np.random.Generator,
    clip_id: str,
    *,
    bucket: int = 0,
    latent_frames: int = 2,
    latent_hw: tuple[int, int] = (4, 4),
    channels: int = 4,
    frames_only: bool = False,
    text_len: int = 4,
    text_dim: int = 8,
    audio_layers: int = 2,
    audio_dim: int = 4,
    audio_eligible: bool = True,
    pose_eligible: bool = True,
    num_refs: int = 2,
    split: str | None = None,
) -> dict[str, Any]:
    """One valid record of the record table; pixel size is 8x the latent size (the VAE's compression)."""
    num_frames = 1 + 4 * (latent_frames - 1)
    h, w = latent_hw
    height, width = 8 * h, 8 * w
    ref_index = np.sort(rng.choice(num_frames, size=min(num_refs, num_frames), replace=False)).astype(
        np.int32
    )
    if frames_only:
        frames = rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
        latents = np.zeros((0, 0, 0, 0), np.float32)
        ref_latents = np.zeros((0, 0, 0, 0), np.float32)
    else:
        frames = np.zeros((0, 0, 0, 3), np.uint8)
        latents = rng.standard_normal((latent_frames, h, w, channels), dtype=np.float32)
        ref_latents = rng.standard_normal((len(ref_index), h, w, channels), dtype=np.float32)
    text_mask = np.zeros(text_len, bool)
    text_mask[: int(rng.integers(1, text_len + 1))] = True
    kp = rng.random((num_frames, records.NUM_KEYPOINTS, 3)).astype(np.float32)
    record = dict(
        clip_id=clip_id,
        bucket=bucket,
        height=height,
        width=width,
        num_frames=num_frames,
        latents=latents,
        ref_latents=ref_latents,
        ref_frame_index=ref_index,
        frames=frames,
        audio_features=rng.standard_normal((num_frames, audio_layers, audio_dim), dtype=np.float32),
        text_embedding=rng.standard_normal((text_len, text_dim), dtype=np.float32),
        text_mask=text_mask,
        keypoints=kp if pose_eligible else np.zeros((0, records.NUM_KEYPOINTS, 3), np.float32),
        audio_eligible=audio_eligible,
        pose_eligible=pose_eligible,
        lipsync_score=float(rng.uniform(0, 10)),
        pose_visibility=float("nan"),
        aesthetics=float(rng.uniform(0, 10)),
        motion_amplitude=float(rng.uniform(0, 1)),
    )
    if split is not None:
        record["split"] = split
    return record
