"""The raw-clip manifest: one JSON object per line, as fixed in docs/design.md ("Raw-clip manifest").

Each entry names a source video (required), optionally a separate audio file, a keypoint file, a
caption, quality scores (lip-sync, pose visibility, aesthetics, motion amplitude: the filters of
OmniHuman-1 section 4.1) and a split. Paths are relative to the manifest's folder and may not leave
it unless `allow_outside_root=True`. File sizes are checked here, before anything is decoded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

SCORE_KEYS = ("lipsync", "pose_visibility", "aesthetics", "motion_amplitude")
KNOWN_KEYS = {"clip_id", "video", "audio", "keypoints", "caption", "scores", "identity", "split"}
DEFAULT_MAX_FILE_BYTES = 4 * 1024**3  # 4 GiB


class ManifestError(ValueError):
    """A manifest line that cannot be used. `reason` is a short stable tag for skip counting."""

    def __init__(self, message: str, *, line: int | None = None, reason: str = "bad_manifest_line"):
        self.line = line
        self.reason = reason
        super().__init__(f"manifest line {line}: {message}" if line is not None else message)


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    """One validated manifest line, with absolute resolved paths."""

    clip_id: str
    video: Path
    audio: Path | None = None
    keypoints: Path | None = None
    caption: str = ""
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    identity: str = ""
    split: str = "train"
    line: int = 0

    def score(self, key: str) -> float:
        """The named score, or NaN when the manifest does not give it."""
        return float(self.scores.get(key, math.nan))


def _require_str(obj: dict, key: str, line: int, *, required: bool) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ManifestError(f"missing required key {key!r}", line=line)
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise ManifestError(f"{key!r} must be a non-empty string, got {value!r}", line=line)
    return value


def _resolve(
    root: Path, rel: str, key: str, line: int, *, allow_outside_root: bool, max_file_bytes: int | None
) -> Path:
    try:
        path = (root / rel).resolve()
        outside = not path.is_relative_to(root)
        exists = path.is_file()
    except (OSError, ValueError) as e:  # a NUL byte, an over-long name, a symlink loop
        raise ManifestError(f"{key} path {rel[:200]!r} is not usable ({e})", line=line) from e
    if outside and not allow_outside_root:
        raise ManifestError(
            f"{key} path {rel!r} leaves the manifest folder {root}; move the file under it "
            "or pass allow_outside_root=True (--allow_outside_root)",
            line=line,
            reason="path_outside_root",
        )
    if not exists:
        raise ManifestError(f"{key} file {rel!r} does not exist ({path})", line=line, reason="missing_file")
    if max_file_bytes is not None:
        size = path.stat().st_size
        if size > max_file_bytes:
            raise ManifestError(
                f"{key} file {rel!r} is {size} bytes, over max_file_bytes={max_file_bytes}; "
                "split or re-encode it, or raise the limit",
                line=line,
                reason="file_too_large",
            )
    return path


def _parse_scores(raw: object, line: int) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ManifestError(f"'scores' must be an object, got {type(raw).__name__}", line=line)
    scores: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ManifestError(f"score {key!r} must be a number, got {value!r}", line=line)
        scores[str(key)] = float(value)
    return scores


def parse_entry(
    obj: object,
    root: Path,
    line: int,
    *,
    allow_outside_root: bool = False,
    max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
) -> ManifestEntry:
    """Validate one decoded JSON object and resolve its paths against `root`. Raises ManifestError."""
    if not isinstance(obj, dict):
        raise ManifestError(f"expected a JSON object, got {type(obj).__name__}", line=line)
    clip_id = _require_str(obj, "clip_id", line, required=True)
    video = _require_str(obj, "video", line, required=True)
    audio = _require_str(obj, "audio", line, required=False)
    keypoints = _require_str(obj, "keypoints", line, required=False)
    caption = obj.get("caption", "") or ""
    if not isinstance(caption, str):
        raise ManifestError(f"'caption' must be a string, got {caption!r}", line=line)
    identity = obj.get("identity", "") or ""
    split = obj.get("split", "train") or "train"
    if not isinstance(identity, str) or not isinstance(split, str):
        raise ManifestError("'identity' and 'split' must be strings", line=line)
    scores = _parse_scores(obj.get("scores"), line)
    resolve = lambda rel, key: _resolve(
        root, rel, key, line, allow_outside_root=allow_outside_root, max_file_bytes=max_file_bytes
    )
    return ManifestEntry(
        clip_id=clip_id,
        video=resolve(video, "video"),
        audio=resolve(audio, "audio") if audio else None,
        keypoints=resolve(keypoints, "keypoints") if keypoints else None,
        caption=caption,
        scores=scores,
        identity=identity,
        split=split,
        line=line,
    )


def _decode_line(raw: bytes, line: int) -> object | None:
    """One manifest line's JSON value, None for a blank line; ManifestError for bad bytes or JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"not UTF-8 text ({e.reason} at byte {e.start})", line=line) from e
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"invalid JSON ({e.msg} at column {e.colno})", line=line) from e
    except RecursionError as e:
        raise ManifestError("JSON nested too deeply", line=line) from e


def iter_manifest(
    manifest_path: str | os.PathLike,
    *,
    allow_outside_root: bool = False,
    max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
) -> Iterator[ManifestEntry | ManifestError]:
    """Yield each non-blank line as a ManifestEntry, or as the ManifestError that refused it.

    Line numbers are 1-based. Use this to count skips; use `read_manifest` to fail on the first error.
    """
    path = Path(manifest_path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    root = path.parent.resolve()
    seen: dict[str, int] = {}
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                obj = _decode_line(raw, line_no)
            except ManifestError as e:
                yield e
                continue
            if obj is None:
                continue
            try:
                entry = parse_entry(
                    obj, root, line_no, allow_outside_root=allow_outside_root, max_file_bytes=max_file_bytes
                )
            except ManifestError as e:
                yield e
                continue
            if entry.clip_id in seen:
                yield ManifestError(
                    f"clip_id {entry.clip_id!r} repeats line {seen[entry.clip_id]}; clip ids must be unique",
                    line=line_no,
                    reason="duplicate_clip_id",
                )
                continue
            seen[entry.clip_id] = line_no
            yield entry


def read_manifest(
    manifest_path: str | os.PathLike,
    *,
    allow_outside_root: bool = False,
    max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
) -> list[ManifestEntry]:
    """All entries of a manifest; raises the first ManifestError (naming its line number)."""
    entries = []
    for item in iter_manifest(
        manifest_path, allow_outside_root=allow_outside_root, max_file_bytes=max_file_bytes
    ):
        if isinstance(item, ManifestError):
            raise item
        entries.append(item)
    return entries


def list_splits(manifest_path: str | os.PathLike) -> list[str]:
    """The distinct `split` values of a manifest's parseable lines, in first-seen order."""
    splits: list[str] = []
    with Path(manifest_path).open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                obj = _decode_line(raw, line_no)
            except ManifestError:
                continue
            if isinstance(obj, dict):
                split = obj.get("split") or "train"
                if isinstance(split, str) and split not in splits:
                    splits.append(split)
    return splits
