"""Featurization: raw manifest clips -> dataset records (docs/design.md, "Dataset record").

This prepares the training data of OmniHuman-1 section 3: each source video is resampled to the
target fps, fitted to its aspect-ratio bucket (native-size training, section 3.1), cut into clips of
`F = 1 + 4k` frames (the causal 3D VAE's frame count), and stored as VAE latents (or RGB frames when
no VAE is given) with R single-frame reference-candidate latents, per-frame audio features
(wav2vec2 or log-mel), the caption's text-encoder states and keypoints. The lip-sync and
pose-visibility scores gate the audio and pose conditions (section 3.3 / 4.1: the 13% of data
passing these filters trains audio and pose).

Bad input never stops the job: every refused entry or clip is counted by reason in a
`FeaturizeReport`. `featurize_manifest` runs entries in a process pool (encoders loaded once per
worker) and yields records in manifest order.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline import records as record_spec
from data_pipeline.audio_features import SAMPLE_RATE, AudioFrontend, make_audio_frontend
from data_pipeline.buckets import bucket_table
from data_pipeline.manifest import DEFAULT_MAX_FILE_BYTES, ManifestEntry, ManifestError, iter_manifest
from data_pipeline.media import MediaError, Video, decode_audio, decode_video, load_keypoints
from data_pipeline.report import FeaturizeReport

MAX_CONSECUTIVE_CRASHES = 5

# (B, F, H, W, 3) float32 in [-1, 1] -> (B, T, h, w, C) float32, T = 1 + (F - 1) // 4.
EncodeFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class FeaturizeOptions:
    """Every knob of featurization. Plain data, picklable (it travels to worker processes)."""

    fps: float = 25.0
    pixel_budget: int = 512 * 512  # bucket area (data_pipeline.buckets.bucket_table)
    clip_frames: int = 1 + 4 * 24  # F = 1 + 4k video frames per training clip
    clip_stride: int | None = None  # frames between clip starts; None: clip_frames (no overlap)
    max_clips_per_video: int | None = None
    audio_frontend: str = "logmel"  # "logmel" (no weights) | "wav2vec2" (needs audio_model_dir)
    audio_model_dir: str = ""  # local Wav2Vec2Model folder
    audio_layers: tuple[int, ...] | None = None  # wav2vec2 hidden_states kept; None: all
    mel_bins: int = 80
    mel_groups: int = 1  # log-mel sub-windows per video frame (the L axis)
    silence_rms: float = 1e-4  # a clip whose audio RMS is below this is skipped as silent
    text_encoder_dir: str = ""  # local T5 / UMT5 / AutoModel folder with its tokenizer; "": no text
    text_max_len: int = 256
    vae_path: str = ""  # diffusers-format VAE folder; "": store frames instead of latents
    vae_chunk_frames: int | None = None
    num_ref_candidates: int = 3  # R reference-candidate frames per clip
    lipsync_threshold: float = 5.0  # audio_eligible: lipsync score (SyncNet confidence) >= this
    pose_visibility_threshold: float = 0.8  # pose_eligible: visibility >= this and keypoints present
    keypoint_count_tolerance: int = 0  # allowed |keypoint frames - decoded source frames|
    allow_outside_root: bool = False
    max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES
    # Longer sources are refused (split them first): a decoded source is held in memory at bucket
    # size, N * H * W * 3 bytes (60 s at 25 fps and 512x512: 1.2 GB per worker).
    max_duration_s: float | None = 60.0
    max_source_frames: int | None = None
    decode_timeout_s: float | None = 300.0  # wall-clock limit per file decode
    split: str | None = None  # only entries of this split; None: all

    def __post_init__(self) -> None:
        if self.audio_layers is not None:  # a list from a CLI: keep the options hashable
            object.__setattr__(self, "audio_layers", tuple(int(i) for i in self.audio_layers))

    def validate(self) -> None:
        """Raise ValueError / FileNotFoundError naming the bad option before any work starts."""
        if self.clip_frames < 1 or (self.clip_frames - 1) % 4:
            raise ValueError(f"clip_frames must be 1 + 4k (e.g. 33, 97, 129), got {self.clip_frames}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.clip_stride is not None and self.clip_stride < 1:
            raise ValueError(f"clip_stride must be >= 1, got {self.clip_stride}")
        if self.num_ref_candidates < 1:
            raise ValueError(f"num_ref_candidates must be >= 1, got {self.num_ref_candidates}")
        if self.audio_frontend not in ("logmel", "wav2vec2"):
            raise ValueError(f"audio_frontend must be 'logmel' or 'wav2vec2', got {self.audio_frontend!r}")
        bucket_table(self.pixel_budget)
        folders = [("audio_model_dir", self.audio_model_dir if self.audio_frontend == "wav2vec2" else "")]
        folders += [("text_encoder_dir", self.text_encoder_dir), ("vae_path", self.vae_path)]
        if self.audio_frontend == "wav2vec2" and not self.audio_model_dir:
            raise ValueError("audio_frontend='wav2vec2' needs audio_model_dir (a local Wav2Vec2Model folder)")
        for name, folder in folders:
            if folder and not (Path(folder) / "config.json").is_file():
                raise FileNotFoundError(f"{name}={folder!r} is not a model folder with a config.json")


def load_vae_encoder(path: str, chunk_frames: int | None = None) -> EncodeFn:
    """An EncodeFn over `omnihuman_jax.models.vae.encode_video` with the VAE folder at `path`."""
    import jax

    from omnihuman_jax.interop.diffusers_vae import load_vae
    from omnihuman_jax.models.vae import encode_video

    cfg, params = load_vae(path)
    encode = jax.jit(lambda p, x: encode_video(cfg, p, x, chunk_frames=chunk_frames))
    return lambda frames: np.asarray(encode(params, frames), dtype=np.float32)


def reference_indices(num_frames: int, count: int) -> np.ndarray:
    """Centres of `count` equal parts of the clip: R candidate reference frames spread over it. (R,)"""
    return ((np.arange(count) + 0.5) * num_frames / count).astype(np.int32)


def clip_starts(num_frames: int, options: FeaturizeOptions) -> list[int]:
    """Start frames of the training clips cut from a video of `num_frames` frames at the target fps."""
    stride = options.clip_stride or options.clip_frames
    starts = list(range(0, num_frames - options.clip_frames + 1, stride))
    return starts[: options.max_clips_per_video] if options.max_clips_per_video else starts


class SkipEntry(Exception):
    """A whole manifest entry is refused; `reason` is the report tag."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


class Featurizer:
    """Featurizes manifest entries with encoders loaded once (per process)."""

    def __init__(self, options: FeaturizeOptions, encode_fn: EncodeFn | None = None):
        options.validate()
        self.options = options
        self.buckets = bucket_table(options.pixel_budget)
        self.audio: AudioFrontend = make_audio_frontend(
            options.audio_frontend,
            model_dir=options.audio_model_dir or None,
            layers=options.audio_layers,
            n_mels=options.mel_bins,
            groups=options.mel_groups,
        )
        self.text = None
        if options.text_encoder_dir:
            from data_pipeline.text_features import TextEncoder

            self.text = TextEncoder(options.text_encoder_dir, options.text_max_len)
        if encode_fn is None and options.vae_path:
            encode_fn = load_vae_encoder(options.vae_path, options.vae_chunk_frames)
        self.encode_fn = encode_fn

    # -- whole-entry stages: a failure refuses the entry ------------------------------------
    def _video(self, entry: ManifestEntry) -> Video:
        o = self.options
        video = decode_video(
            entry.video,
            fps=o.fps,
            buckets=self.buckets,
            max_source_frames=o.max_source_frames,
            max_duration_s=o.max_duration_s,
            decode_timeout_s=o.decode_timeout_s,
        )
        if video.frames.shape[0] < o.clip_frames:
            raise SkipEntry(
                "too_few_frames",
                f"{entry.video.name} gives {video.frames.shape[0]} frames at {o.fps} fps, "
                f"fewer than clip_frames={o.clip_frames}",
            )
        return video

    def _waveform(self, entry: ManifestEntry) -> np.ndarray:
        o = self.options
        source = entry.audio or entry.video
        return decode_audio(source, max_duration_s=o.max_duration_s, decode_timeout_s=o.decode_timeout_s)

    def _keypoints(self, entry: ManifestEntry, video: Video) -> np.ndarray | None:
        """(N, 133, 3) keypoints at the target fps in bucket coordinates, or None when absent."""
        if entry.keypoints is None:
            return None
        keypoints = load_keypoints(entry.keypoints)  # (F_src, 133, 3)
        if abs(keypoints.shape[0] - video.num_source_frames) > self.options.keypoint_count_tolerance:
            raise SkipEntry(
                "keypoints_count_mismatch",
                f"{entry.keypoints.name} has {keypoints.shape[0]} frames but {entry.video.name} has "
                f"{video.num_source_frames}; re-extract keypoints for every source frame",
            )
        picked = keypoints[np.minimum(video.source_index, keypoints.shape[0] - 1)]  # (N, 133, 3)
        return video.crop.normalize_keypoints(picked)

    def _text(self, entry: ManifestEntry) -> tuple[np.ndarray, np.ndarray]:
        if self.text is None:
            return np.zeros((0, 0), np.float32), np.zeros((0,), bool)
        try:
            return self.text(entry.caption)
        except Exception as e:  # tokenizer / model failure on this caption only
            raise SkipEntry("text_encode_error", f"caption could not be encoded ({e!r})") from e

    # -- per clip ---------------------------------------------------------------------------
    def _latents(self, frames: np.ndarray, ref_index: np.ndarray) -> dict[str, np.ndarray]:
        """frames (F, H, W, 3) uint8 -> the video fields of a record."""
        if self.encode_fn is None:
            return dict(
                latents=np.zeros((0, 0, 0, 0), np.float32),
                ref_latents=np.zeros((0, 0, 0, 0), np.float32),
                frames=frames,
            )
        x = frames.astype(np.float32) / 127.5 - 1.0  # (F, H, W, 3) in [-1, 1]
        latents = np.asarray(self.encode_fn(x[None]), np.float32)[0]  # (T, h, w, C)
        refs = np.asarray(self.encode_fn(x[ref_index][:, None]), np.float32)[:, 0]  # (R, h, w, C)
        return dict(latents=latents, ref_latents=refs, frames=np.zeros((0, 0, 0, 3), np.uint8))

    def featurize_entry(self, entry: ManifestEntry) -> tuple[list[dict[str, Any]], FeaturizeReport]:
        """All training-clip records of one manifest entry, and the report of what was skipped."""
        report = FeaturizeReport()
        report.entries_seen += 1
        try:
            video = self._video(entry)
            waveform = self._waveform(entry)
            audio = self.audio(waveform, video.frames.shape[0], video.fps)  # (N, L, D)
            keypoints = self._keypoints(entry, video)
            text_embedding, text_mask = self._text(entry)
        except (MediaError, SkipEntry) as e:
            report.skip_entry(e.reason, str(e), entry.clip_id, entry.line)
            return [], report
        except Exception as e:  # an unforeseen failure on this input: count it, keep the job going
            report.skip_entry("featurize_error", repr(e), entry.clip_id, entry.line)
            return [], report
        out = []
        for segment, start in enumerate(clip_starts(video.frames.shape[0], self.options)):
            clip_id = f"{entry.clip_id}_{segment:04d}"
            try:
                record = self._clip_record(
                    entry, video, waveform, audio, keypoints, text_embedding, text_mask, start, clip_id
                )
            except SkipEntry as e:
                report.skip_clip(e.reason, str(e), clip_id, entry.line)
                continue
            except Exception as e:  # e.g. the encoder failing on this clip
                report.skip_clip("featurize_error", repr(e), clip_id, entry.line)
                continue
            out.append(record)
        report.clips_written += len(out)
        report.entries_used += int(bool(out))
        return out, report

    def _clip_record(
        self,
        entry: ManifestEntry,
        video: Video,
        waveform: np.ndarray,
        audio: np.ndarray,
        keypoints: np.ndarray | None,
        text_embedding: np.ndarray,
        text_mask: np.ndarray,
        start: int,
        clip_id: str,
    ) -> dict[str, Any]:
        o = self.options
        stop = start + o.clip_frames
        s0, s1 = round(start / video.fps * SAMPLE_RATE), round(stop / video.fps * SAMPLE_RATE)
        segment = waveform[s0:s1]
        rms = float(np.sqrt(np.mean(np.square(segment, dtype=np.float64)))) if segment.size else 0.0
        if rms < o.silence_rms:
            raise SkipEntry("silent_audio", f"audio RMS {rms:.2e} < silence_rms={o.silence_rms}")
        frames = video.frames[start:stop]  # (F, H, W, 3)
        ref_index = reference_indices(o.clip_frames, o.num_ref_candidates)  # (R,)
        clip_keypoints = (
            keypoints[start:stop] if keypoints is not None else np.zeros((0, 133, 3), np.float32)
        )  # (F, 133, 3) or (0, 133, 3)
        record: dict[str, Any] = dict(
            clip_id=clip_id,
            bucket=np.asarray(video.bucket, np.int32),
            height=np.asarray(frames.shape[1], np.int32),
            width=np.asarray(frames.shape[2], np.int32),
            num_frames=np.asarray(o.clip_frames, np.int32),
            **self._latents(frames, ref_index),
            ref_frame_index=ref_index,
            audio_features=np.ascontiguousarray(audio[start:stop], np.float32),  # (F, L, D)
            text_embedding=text_embedding,
            text_mask=text_mask,
            keypoints=np.ascontiguousarray(clip_keypoints, np.float32),
            lipsync_score=np.asarray(entry.score("lipsync"), np.float32),
            pose_visibility=np.asarray(entry.score("pose_visibility"), np.float32),
            aesthetics=np.asarray(entry.score("aesthetics"), np.float32),
            motion_amplitude=np.asarray(entry.score("motion_amplitude"), np.float32),
        )
        # NaN comparisons are False: an absent score is never eligible.
        record["audio_eligible"] = np.asarray(entry.score("lipsync") >= o.lipsync_threshold)
        record["pose_eligible"] = np.asarray(
            keypoints is not None and entry.score("pose_visibility") >= o.pose_visibility_threshold
        )
        for name in ("latents", "ref_latents", "audio_features", "text_embedding", "keypoints"):
            if not np.all(np.isfinite(record[name])):
                raise SkipEntry("nan_features", f"{name} holds NaN or inf")
        try:
            record_spec.validate_record(record)
        except record_spec.RecordError as e:
            raise SkipEntry("invalid_record", str(e)) from e
        record["split"] = entry.split  # routing key for the builder; not a stored feature
        return record


# ---------------------------------------------------------------------------------------------
# Worker pool
# ---------------------------------------------------------------------------------------------

_WORKER: Featurizer | None = None


def _init_worker(options: FeaturizeOptions, encode_fn: EncodeFn | None) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # each worker is one core's worth
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # workers share an accelerator
    global _WORKER
    _WORKER = Featurizer(options, encode_fn)


def _work(entry: ManifestEntry) -> tuple[list[dict[str, Any]], FeaturizeReport]:
    assert _WORKER is not None, "featurize worker used before its initializer ran"
    return _WORKER.featurize_entry(entry)


_PROCESS_FEATURIZER: dict[FeaturizeOptions, Featurizer] = {}


def featurize_clip(entry: ManifestEntry, options: FeaturizeOptions) -> list[dict[str, Any]]:
    """Records of one entry with this process's cached Featurizer (for Beam-style `FlatMap`)."""
    if options not in _PROCESS_FEATURIZER:
        _PROCESS_FEATURIZER[options] = Featurizer(options)
    return _PROCESS_FEATURIZER[options].featurize_entry(entry)[0]


class FeaturizeRun(Iterator[dict[str, Any]]):
    """Iterator of records in manifest order; `.report` holds the counts (complete once exhausted)."""

    def __init__(
        self,
        manifest_path: str | os.PathLike,
        options: FeaturizeOptions,
        *,
        num_workers: int = 0,
        progress: bool = True,
        encode_fn: EncodeFn | None = None,
    ):
        options.validate()
        self.options, self.num_workers, self.encode_fn = options, num_workers, encode_fn
        self.report = FeaturizeReport()
        self._entries = self._read_manifest(manifest_path)
        self._progress = progress
        self._records = self._run()

    def _read_manifest(self, manifest_path: str | os.PathLike) -> list[ManifestEntry]:
        o = self.options
        entries = []
        for item in iter_manifest(
            manifest_path, allow_outside_root=o.allow_outside_root, max_file_bytes=o.max_file_bytes
        ):
            if isinstance(item, ManifestError):
                self.report.entries_seen += 1
                self.report.skip_entry(item.reason, str(item), None, item.line)
            elif o.split is None or item.split == o.split:
                entries.append(item)
        return entries

    def __next__(self) -> dict[str, Any]:
        return next(self._records)

    def close(self) -> None:
        self._records.close()

    def _run(self) -> Iterator[dict[str, Any]]:
        from tqdm import tqdm

        bar = tqdm(total=len(self._entries), disable=not self._progress, unit="video", desc="featurize")
        try:
            results = self._serial() if self.num_workers <= 0 else self._parallel()
            for records, report in results:
                self.report.merge(report)
                bar.update(1)
                bar.set_postfix(clips=self.report.clips_written, skipped=self.report.num_skipped)
                yield from records
        finally:
            bar.close()

    def _serial(self) -> Iterator[tuple[list[dict[str, Any]], FeaturizeReport]]:
        featurizer = Featurizer(self.options, self.encode_fn)
        for entry in self._entries:
            yield featurizer.featurize_entry(entry)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.num_workers,
            mp_context=multiprocessing.get_context("spawn"),  # no fork of a process holding jax/torch threads
            initializer=_init_worker,
            initargs=(self.options, self.encode_fn),
        )

    def _parallel(self) -> Iterator[tuple[list[dict[str, Any]], FeaturizeReport]]:
        """Ordered results with at most 2 entries per worker in flight (bounds memory).

        A crashed worker breaks the pool: the pool is rebuilt and the entries that were in flight
        are re-run one at a time, so the entry that crashes again is known and skipped.
        """
        pending: deque[ManifestEntry] = deque(self._entries)
        suspects: set[str] = set()
        inflight: deque[tuple[ManifestEntry, Future]] = deque()
        pool, crashes = self._new_pool(), 0
        try:
            while pending or inflight:
                while pending and len(inflight) < 2 * self.num_workers:
                    if pending[0].clip_id in suspects and inflight:
                        break  # run a suspect alone
                    entry = pending.popleft()
                    inflight.append((entry, pool.submit(_work, entry)))
                    if entry.clip_id in suspects:
                        break
                entry, future = inflight.popleft()
                try:
                    result = future.result()
                except BrokenProcessPool:
                    crashes += 1
                    if crashes > MAX_CONSECUTIVE_CRASHES:
                        raise RuntimeError(
                            f"featurize workers died {crashes} times in a row; check that the encoders "
                            "load in a fresh process (run with num_workers=0 to see the error)"
                        ) from None
                    pool.shutdown(wait=True, cancel_futures=True)
                    pool = self._new_pool()
                    requeue = [entry] + [other for other, _ in inflight]
                    inflight.clear()
                    if entry.clip_id in suspects:  # it ran alone: it is the one that crashes
                        yield self._failed(entry, "worker_crashed", "the worker process died on this entry")
                        requeue = requeue[1:]
                    suspects.update(e.clip_id for e in requeue)
                    pending.extendleft(reversed(requeue))
                    continue
                except Exception as e:  # an unexpected error inside one entry: count it, go on
                    result = self._failed(entry, "featurize_error", repr(e))
                crashes = 0
                yield result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _failed(entry: ManifestEntry, reason: str, message: str) -> tuple[list, FeaturizeReport]:
        report = FeaturizeReport()
        report.entries_seen += 1
        report.skip_entry(reason, message, entry.clip_id, entry.line)
        return [], report


def featurize_manifest(
    manifest_path: str | os.PathLike,
    options: FeaturizeOptions,
    *,
    num_workers: int = 0,
    progress: bool = True,
    encode_fn: EncodeFn | None = None,
) -> FeaturizeRun:
    """Records of every clip of the manifest, in manifest order; `.report` counts the skips.

    `num_workers > 0` featurizes entries in that many spawned processes, each loading the encoders
    once. `encode_fn` replaces the VAE named by `options.vae_path` (it must be picklable, i.e. a
    module-level function, when `num_workers > 0`).
    """
    return FeaturizeRun(
        manifest_path, options, num_workers=num_workers, progress=progress, encode_fn=encode_fn
    )
