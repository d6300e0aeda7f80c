"""The featurization report: skipped entries and clips counted by reason; bad input never stops a job.

Written as JSON next to a built dataset (`featurize_report.json`) and printed as a summary.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

MAX_REPORT_EXAMPLES = 50


@dataclasses.dataclass
class FeaturizeReport:
    """What featurization did: counts per skip reason and the first few examples. JSON-serialisable.

    `skipped_entries` counts refused manifest lines / source videos, `skipped_clips` refused
    training clips inside an otherwise usable video.
    """

    entries_seen: int = 0
    entries_used: int = 0  # entries that gave at least one clip
    clips_written: int = 0
    skipped_entries: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped_clips: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped_entries.values()) + sum(self.skipped_clips.values())

    def _note(self, kind: str, reason: str, message: str, clip_id: str | None, line: int | None) -> None:
        if len(self.examples) < MAX_REPORT_EXAMPLES:
            self.examples.append(dict(kind=kind, reason=reason, clip_id=clip_id, line=line, message=message))

    def skip_entry(self, reason: str, message: str, clip_id: str | None, line: int | None) -> None:
        self.skipped_entries[reason] = self.skipped_entries.get(reason, 0) + 1
        self._note("entry", reason, message, clip_id, line)

    def skip_clip(self, reason: str, message: str, clip_id: str, line: int | None) -> None:
        self.skipped_clips[reason] = self.skipped_clips.get(reason, 0) + 1
        self._note("clip", reason, message, clip_id, line)

    def merge(self, other: FeaturizeReport) -> None:
        self.entries_seen += other.entries_seen
        self.entries_used += other.entries_used
        self.clips_written += other.clips_written
        for mine, theirs in (
            (self.skipped_entries, other.skipped_entries),
            (self.skipped_clips, other.skipped_clips),
        ):
            for reason, count in theirs.items():
                mine[reason] = mine.get(reason, 0) + count
        self.examples.extend(other.examples[: MAX_REPORT_EXAMPLES - len(self.examples)])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the report atomically (a temporary file renamed over `path`)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        os.replace(tmp, path)

    def summary(self) -> str:
        lines = [
            f"featurize: {self.clips_written} clips from {self.entries_used} of {self.entries_seen} entries; "
            f"{self.num_skipped} skipped"
        ]
        for kind, counts in (("entries", self.skipped_entries), ("clips", self.skipped_clips)):
            for reason, count in sorted(counts.items(), key=lambda kv: -kv[1]):
                lines.append(f"  skipped {kind}: {reason}: {count}")
        return "\n".join(lines)
