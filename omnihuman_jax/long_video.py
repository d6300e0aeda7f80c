"""Long videos as chained segments joined by motion frames (OmniHuman-1 section 3.4).

The driving audio's length sets the video length. The video is generated in segments of F = 1 + 4k frames
(the training clip length, so memory is bounded by one segment). Every segment after the first takes the
last 5 frames of the previous one, re-encoded by the VAE, as its motion frames: 5 video frames are exactly
latent frames 0 and 1 (docs/design.md). Segment n + 1 starts 5 frames before segment n ends, and its first
5 frames, which reproduce those motion frames, are not emitted again, so segments join with no duplicated
and no missing frame:

    segment 0: frames [0, F)             emits [0, F)
    segment n: frames [s_n, s_n + F)     emits [s_n + 5, s_n + F),  s_n = s_{n-1} + F - 5

The last segment is generated at full length and cut to the video length. The driving conditions of each
segment are the slice [s_n, s_n + F) of per-frame features computed once over the whole input (so wav2vec2
sees the audio around each segment), exactly as training clips are cut from featurized videos.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omnihuman_jax.guidance import GuidanceMode, cfg_schedule, make_guided_velocity
from omnihuman_jax.sampling import sample_flow, timestep_grid

MOTION_FRAMES = 5  # video frames = latent frames 0 and 1
VAE_TEMPORAL = 4


def latent_frames_for(num_frames: int) -> int:
    if num_frames < 1 or (num_frames - 1) % VAE_TEMPORAL:
        raise ValueError(f"a segment has 1 + 4k video frames (e.g. 33, 97), got {num_frames}")
    return 1 + (num_frames - 1) // VAE_TEMPORAL


@dataclasses.dataclass(frozen=True)
class Segment:
    index: int
    start: int  # global video frame of the segment's frame 0
    num_frames: int  # F = 1 + 4k
    emit_from: int  # first emitted frame, segment-local: 0, or MOTION_FRAMES after the first segment
    emit_to: int  # end of the emitted frames (exclusive), segment-local

    @property
    def latent_frames(self) -> int:
        return latent_frames_for(self.num_frames)

    @property
    def has_motion(self) -> bool:
        return self.index > 0

    def frame_slice(self) -> slice:
        """The global video frames this segment covers (its conditions), [start, start + F)."""
        return slice(self.start, self.start + self.num_frames)


def plan_segments(
    total_frames: int, segment_frames: int, motion_frames: int = MOTION_FRAMES
) -> list[Segment]:
    """Segments covering `total_frames` video frames; see the module docstring.

    A video shorter than `segment_frames` gets one segment of the shortest 1 + 4k length that covers it.
    """
    if total_frames < 1:
        raise ValueError(f"the video needs at least 1 frame, got {total_frames}")
    latent_frames_for(segment_frames)
    latent_frames_for(motion_frames)
    if segment_frames <= motion_frames:
        raise ValueError(
            f"segment_frames={segment_frames} must exceed the {motion_frames} motion frames "
            f"(use 9, 17, 33, ...)"
        )
    f = min(segment_frames, 1 + VAE_TEMPORAL * math.ceil((total_frames - 1) / VAE_TEMPORAL))
    plan = [Segment(0, 0, f, 0, min(f, total_frames))]
    while plan[-1].start + plan[-1].emit_to < total_frames:
        start = plan[-1].start + f - motion_frames
        plan.append(Segment(len(plan), start, f, motion_frames, min(f, total_frames - start)))
    return plan


def covered_frames(plan: list[Segment]) -> int:
    """Video frames the conditions must cover: the last segment's end (>= the video length)."""
    return plan[-1].start + plan[-1].num_frames


def motion_inputs(motion_latents: jax.Array | None, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """Motion latents (B, 2, h, w, C) or None -> (motion_latents (B, T, h, w, C), motion_mask (B, T))."""
    b, t = shape[0], shape[1]
    full = jnp.zeros(shape, jnp.float32)
    mask = jnp.zeros((b, t), bool)
    if motion_latents is None:
        return full, mask
    m = motion_latents.shape[1]
    full = full.at[:, :m].set(motion_latents.astype(jnp.float32))
    return full, mask.at[:, :m].set(True)


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    num_steps: int = 30
    shift: float = 1.0
    solver: str = "euler"
    cfg_text: float = 3.0
    cfg_audio: float = 3.0
    cfg_schedule: str = "linear"
    cfg_floor: float = 1.0
    seed: int = 0
    cfg_pose: float = 1.0  # the pose scale of a pose-guided mode (`GuidanceMode.guided == "pose"`)


class SegmentSampler:
    """Samples one segment's latents with batched multi-condition CFG.

    `__call__(segment, conditions, motion_latents)`: `conditions` holds the segment's single-sample model
    inputs (ref_latents (1, 1, h, w, C), text_emb, text_mask, audio_feats (1, F, L, D), pose_heatmaps
    (1, F, h s, w s, K), optional text_pooled / guidance); motion_latents (1, 2, h, w, C) or None.
    Returns x_0 (1, T, h, w, C). Noise is drawn from fold_in(PRNGKey(seed), segment.index).
    """

    def __init__(
        self,
        model: Any,
        params: Any,
        mode: GuidanceMode,
        settings: SamplerSettings,
        latent_channels: int,
        *,
        mesh: Any = None,
        on_step: Callable[[int], None] | None = None,
        velocity: Callable[..., jax.Array] | None = None,
    ):
        """`velocity`: a `make_guided_velocity(model, mode, mesh)` already built (and compiled) for another
        video; by default one is built here."""
        self.params, self.mode, self.settings = params, mode, settings
        self.channels, self.on_step = latent_channels, on_step
        self.velocity = velocity or make_guided_velocity(model, mode, mesh)
        self.timesteps = timestep_grid(settings.num_steps, settings.shift)
        n = settings.num_steps
        self.s_text = cfg_schedule(settings.cfg_schedule, settings.cfg_text, settings.cfg_floor, n)
        # The second scale guides the mode's `guided` condition: audio, or pose in a pose-guided mode.
        second = settings.cfg_pose if mode.guided == "pose" else settings.cfg_audio
        self.s_audio = cfg_schedule(settings.cfg_schedule, second, settings.cfg_floor, n)

    def __call__(
        self, segment: Segment, conditions: dict[str, Any], motion_latents: jax.Array | None
    ) -> jax.Array:
        ref = conditions["ref_latents"]  # (1, 1, h, w, C)
        shape = (ref.shape[0], segment.latent_frames, ref.shape[2], ref.shape[3], self.channels)
        key = jax.random.fold_in(jax.random.PRNGKey(self.settings.seed), segment.index)
        noise = jax.random.normal(key, shape, jnp.float32)
        motion, motion_mask = motion_inputs(motion_latents, shape)
        inputs = {k: jnp.asarray(v) for k, v in conditions.items()}
        inputs["motion_latents"], inputs["motion_mask"] = motion, motion_mask

        def velocity_fn(x: jax.Array, t: jax.Array, i: int) -> jax.Array:
            step_inputs = dict(inputs, noisy_latents=x)
            t_batch = jnp.full((shape[0],), t, jnp.float32)
            return self.velocity(self.params, step_inputs, t_batch, self.s_text[i], self.s_audio[i])

        return sample_flow(
            velocity_fn,
            noise,
            self.timesteps,
            solver=self.settings.solver,
            known=motion,
            known_mask=motion_mask,
            on_step=self.on_step,
        )


def generate_long_video(
    plan: list[Segment],
    segment_conditions: Callable[[Segment], dict[str, Any]],
    sample_segment: Callable[[Segment, dict[str, Any], jax.Array | None], jax.Array],
    decode: Callable[[jax.Array], np.ndarray],
    encode_motion: Callable[[np.ndarray, Segment], jax.Array],
) -> Iterator[tuple[Segment, np.ndarray]]:
    """Yields (segment, emitted frames (n, H, W, 3) uint8) in order; frames are never held past a segment.

    `decode`: latents (1, T, h, w, C) -> frames (F, H, W, 3) uint8. `encode_motion(frames (5, H, W, 3) uint8,
    segment)` -> motion latents (1, 2, h, w, C) for the segment after `segment`.
    """
    motion = None
    for seg in plan:
        latents = sample_segment(seg, segment_conditions(seg), motion)  # (1, T, h, w, C)
        frames = decode(latents)  # (F, H, W, 3) uint8
        if frames.shape[0] != seg.num_frames:
            raise ValueError(f"decode gave {frames.shape[0]} frames for a {seg.num_frames}-frame segment")
        yield seg, frames[seg.emit_from : seg.emit_to]
        if seg.index + 1 < len(plan):
            overlap = plan[seg.index + 1].emit_from  # the next segment's motion frames
            motion = encode_motion(frames[seg.num_frames - overlap :], seg)  # (1, 2, h, w, C)
