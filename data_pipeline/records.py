"""The dataset record: its TFDS feature spec and a validator for record dicts.

One record is one training clip of `F = 1 + 4k` video frames in one aspect-ratio bucket (the native-size
training of OmniHuman-1, section 3.1). The table of fields is fixed in docs/design.md ("Dataset record");
this module is its single source of truth in code.

Every tensor feature is stored ZLIB-encoded: TFDS's numpy decoder (no TensorFlow) cannot rebuild the shape
of a dynamically shaped tensor whose raw value is empty, e.g. `keypoints` of shape (0, 133, 3) when a clip
has no pose, and a ZLIB stream is never empty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

NUM_KEYPOINTS = 133  # COCO-WholeBody / DWPose
SCORE_FIELDS = ("lipsync_score", "pose_visibility", "aesthetics", "motion_amplitude")

# name -> (shape with None for dynamic dims, dtype); scalars have shape ().
TENSOR_FIELDS: dict[str, tuple[tuple[int | None, ...], type]] = {
    "latents": ((None, None, None, None), np.float32),  # (T, h, w, C) or (0, 0, 0, 0)
    "ref_latents": ((None, None, None, None), np.float32),  # (R, h, w, C) or (0, 0, 0, 0)
    "ref_frame_index": ((None,), np.int32),  # (R,)
    "frames": ((None, None, None, 3), np.uint8),  # (F, H, W, 3) or (0, 0, 0, 3)
    "audio_features": ((None, None, None), np.float32),  # (F, L_audio, D_audio)
    "text_embedding": ((None, None), np.float32),  # (L, D_text)
    "text_mask": ((None,), np.bool_),  # (L,)
    "keypoints": ((None, NUM_KEYPOINTS, 3), np.float32),  # (F, 133, 3) or (0, 133, 3)
}
SCALAR_FIELDS: dict[str, type] = {
    "bucket": np.int32,
    "height": np.int32,
    "width": np.int32,
    "num_frames": np.int32,
    "audio_eligible": np.bool_,
    "pose_eligible": np.bool_,
    **{name: np.float32 for name in SCORE_FIELDS},
}
TEXT_FIELDS = ("clip_id",)
RECORD_FIELDS = TEXT_FIELDS + tuple(SCALAR_FIELDS) + tuple(TENSOR_FIELDS)
# Keys a record dict may carry beyond the stored features; they are not written.
EXTRA_KEYS = ("split",)


class RecordError(ValueError):
    """A record dict that does not match the record table of docs/design.md."""


def feature_spec():
    """The `tfds.features.FeaturesDict` of one record."""
    import tensorflow_datasets as tfds  # heavy import, only where a spec is needed

    zlib = tfds.features.Encoding.ZLIB
    spec: dict[str, Any] = {name: tfds.features.Text() for name in TEXT_FIELDS}
    spec.update({name: tfds.features.Scalar(dtype) for name, dtype in SCALAR_FIELDS.items()})
    spec.update(
        {
            name: tfds.features.Tensor(shape=shape, dtype=dtype, encoding=zlib)
            for name, (shape, dtype) in TENSOR_FIELDS.items()
        }
    )
    return tfds.features.FeaturesDict(spec)


def _fail(record: Mapping[str, Any], message: str) -> RecordError:
    clip = record.get("clip_id", "<no clip_id>")
    if isinstance(clip, bytes):
        clip = clip.decode("utf-8", "replace")
    return RecordError(f"record {clip!r}: {message}")


def is_frames_only(record: Mapping[str, Any]) -> bool:
    """True when the clip is stored as RGB frames (built without a VAE) instead of latents."""
    return np.asarray(record["latents"]).size == 0


def latent_frames_for(num_frames: int) -> int:
    """`T` latent frames of a clip of `F = 1 + 4 (T - 1)` video frames."""
    return 1 + (num_frames - 1) // 4


def _check_tensor(record: Mapping[str, Any], name: str) -> np.ndarray:
    shape, dtype = TENSOR_FIELDS[name]
    value = np.asarray(record[name])
    if value.ndim != len(shape):
        raise _fail(record, f"{name} must have {len(shape)} dims {shape}, got shape {value.shape}")
    for got, want in zip(value.shape, shape, strict=True):
        if want is not None and got != want:
            raise _fail(record, f"{name} must have shape {shape}, got {value.shape}")
    if value.size and not np.can_cast(value.dtype, dtype, casting="same_kind"):
        raise _fail(record, f"{name} must be {np.dtype(dtype).name}, got {value.dtype}")
    if value.dtype.kind == "f" and value.size and not np.all(np.isfinite(value)):
        raise _fail(record, f"{name} holds NaN or inf; re-featurize the clip")
    return value


def validate_record(record: Mapping[str, Any]) -> None:
    """Raise `RecordError` naming the field when `record` breaks the record table's contract."""
    unknown = set(record) - set(RECORD_FIELDS) - set(EXTRA_KEYS)
    if unknown:
        raise _fail(record, f"unknown fields {sorted(unknown)}; the record table is {list(RECORD_FIELDS)}")
    missing = [name for name in RECORD_FIELDS if name not in record]
    if missing:
        raise _fail(record, f"missing fields {missing}")
    if not record["clip_id"]:
        raise _fail(record, "clip_id is empty")
    for name in SCALAR_FIELDS:
        if np.ndim(record[name]) != 0:
            raise _fail(record, f"{name} must be a scalar, got shape {np.shape(record[name])}")
    t = {name: _check_tensor(record, name) for name in TENSOR_FIELDS}
    num_frames, height, width = (int(record[k]) for k in ("num_frames", "height", "width"))
    if num_frames < 1 or (num_frames - 1) % 4:
        raise _fail(record, f"num_frames must be 1 + 4k, got {num_frames}")
    if height <= 0 or width <= 0:
        raise _fail(record, f"height and width must be positive, got {height}x{width}")
    if int(record["bucket"]) < 0:
        raise _fail(record, f"bucket must be a bucket-table index >= 0, got {record['bucket']}")
    _check_video(record, t, num_frames, height, width)
    _check_conditions(record, t, num_frames)


def _check_video(record, t: dict[str, np.ndarray], num_frames: int, height: int, width: int) -> None:
    num_refs = t["ref_frame_index"].shape[0]
    if t["latents"].size == 0:  # frames-only
        if t["frames"].shape != (num_frames, height, width, 3):
            raise _fail(
                record,
                f"frames-only record needs frames of shape {(num_frames, height, width, 3)}, "
                f"got {t['frames'].shape}",
            )
        if t["ref_latents"].size:
            raise _fail(record, "frames-only record must store ref_latents of shape (0, 0, 0, 0)")
    else:
        if t["frames"].size:
            raise _fail(record, "a record stores either latents or frames, not both")
        want_t = latent_frames_for(num_frames)
        if t["latents"].shape[0] != want_t:
            raise _fail(record, f"latents need {want_t} latent frames for {num_frames} frames")
        if t["ref_latents"].shape != (num_refs,) + t["latents"].shape[1:]:
            raise _fail(
                record,
                f"ref_latents must be (R={num_refs}, h, w, C) = {(num_refs,) + t['latents'].shape[1:]}, "
                f"got {t['ref_latents'].shape}",
            )
        if num_refs == 0:
            raise _fail(record, "a latent record needs at least one reference candidate")
    idx = t["ref_frame_index"]
    if idx.size and (idx.min() < 0 or idx.max() >= num_frames):
        raise _fail(record, f"ref_frame_index must lie in [0, {num_frames}), got {idx.tolist()}")


def _check_conditions(record, t: dict[str, np.ndarray], num_frames: int) -> None:
    if t["audio_features"].shape[0] not in (0, num_frames):
        raise _fail(record, f"audio_features must have {num_frames} frames, got {t['audio_features'].shape}")
    if bool(record["audio_eligible"]) and t["audio_features"].shape[0] == 0:
        raise _fail(record, "audio_eligible is set but audio_features is empty")
    if t["keypoints"].shape[0] not in (0, num_frames):
        raise _fail(record, f"keypoints must have {num_frames} frames, got {t['keypoints'].shape}")
    if bool(record["pose_eligible"]) and t["keypoints"].shape[0] == 0:
        raise _fail(record, "pose_eligible is set but keypoints is empty")
    if t["text_mask"].shape[0] != t["text_embedding"].shape[0]:
        raise _fail(
            record,
            f"text_mask {t['text_mask'].shape} must match text_embedding length {t['text_embedding'].shape}",
        )
    for name in SCORE_FIELDS:
        value = float(record[name])
        if math.isinf(value):
            raise _fail(record, f"{name} is infinite; use NaN for an absent score")
