"""The training-clip dataset as a TFDS ArrayRecord builder (record table: docs/design.md).

Storage follows the public TFDS + grain recipe: a `tfds.core.GeneratorBasedBuilder` with
`file_format="array_record"` and only Tensor/Scalar/Text features, so it builds and reads without
TensorFlow. TFDS shuffles records at write time (by a hash of the key, here the clip id). Training reads
it through `open_data_source(...)` (random access for grain), never `as_dataset`.

`write_dataset` is crash-safe: records are validated (bad ones skipped and counted), spooled per split,
built into a temporary folder next to the target, indexed, and only then renamed into
`data_dir/<name>/<version>`. A failed or interrupted rebuild leaves an existing dataset untouched.

Besides TFDS's files, each version folder holds `record_index.npz`: per split and per record (in stored
order) the bucket, shape, mode and eligibility flags, so the grain pipeline plans bucketed batches without
decoding every record at start-up.

Apache Beam (distributed builds). A TFDS builder whose `_generate_examples` returns a `beam.PTransform`
runs as a Beam pipeline. It is feasible: apache-beam 2.77.0 publishes a CPython 3.11 manylinux wheel
(`pip download apache-beam` resolves it), and `data_pipeline.featurize.featurize_clip(entry, options)`
is the per-entry function a Beam build needs. It is not wired here, because apache-beam is not installed
in this environment and could not be tested: a Beam variant of `_ClipBuilderBase._generate_examples`
would return `beam.Create(manifest_entries) | beam.FlatMap(featurize_clip, options)
| beam.Filter(valid) | beam.Map(lambda r: (r["clip_id"], r))` per split, and the record index would be
written by a second pass (`scan_index`) after the build. The build would then be started with
`builder.download_and_prepare(download_config=tfds.download.DownloadConfig(beam_options=opts))` where
`opts = apache_beam.options.pipeline_options.PipelineOptions(flags=[...])` and the flags pick the runner:

- Dataflow: `--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp
  --requirements_file=requirements.txt --machine_type=... --experiments=use_runner_v2`
  (data_dir on gs://; GPU workers via `--dataflow_service_options=worker_accelerator=...`).
- Flink: `--runner=FlinkRunner --flink_master=HOST:8081 --environment_type=DOCKER
  --environment_config=IMAGE_WITH_THIS_REPO --parallelism=N`.
- Spark: `--runner=SparkRunner --spark_master_url=spark://HOST:7077 --environment_type=DOCKER
  --environment_config=IMAGE_WITH_THIS_REPO` (portable runner, Spark 3).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import types
import uuid
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import masking, records

log = logging.getLogger(__name__)

DEFAULT_NAME = "omnihuman_clips"
DATASET_VERSION = "1.0.0"
INDEX_FILE = "record_index.npz"
DEFAULT_SPLIT = "train"


class _ClipBuilderBase(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes records spooled by `write_dataset`; one split per spool file."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "Record table of docs/design.md."}

    def __init__(self, *, spool_dir: str | os.PathLike, splits: Iterable[str], **kwargs: Any):
        self._spool_dir = Path(spool_dir)
        self._splits = tuple(splits)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="OmniHuman-style training clips (docs/design.md, 'Dataset record').",
            features=records.feature_spec(),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in self._splits}

    def _generate_examples(self, split: str):
        for record in _read_spool(self._spool_dir / split):
            yield record["clip_id"], record


@cache
def builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
    """A builder class named `name` (TFDS takes the dataset name from the class), not registered."""
    if not name.isidentifier() or name != name.lower():
        raise ValueError(f"dataset name {name!r} must be a lower_snake_case identifier, e.g. omnihuman_clips")
    camel = "".join(part.capitalize() for part in name.split("_")) or "Clips"
    return types.new_class(
        camel, (_ClipBuilderBase,), {"skip_registration": True}, lambda ns: ns.update({"name": name})
    )


@dataclasses.dataclass
class WriteReport:
    """What `write_dataset` wrote: the version folder, records per split, and skipped records."""

    dataset_dir: str
    num_records: dict[str, int]
    skipped: list[tuple[str, str]]  # (clip_id, reason)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


def _read_spool(split_dir: Path) -> Iterator[dict]:
    """Records spooled as one .npz each (numpy only, never pickle), in write order."""
    for path in sorted(split_dir.glob("*.npz")):
        with np.load(path, allow_pickle=False) as z:
            record = {k: z[k] for k in z.files}
        record["clip_id"] = str(record["clip_id"])
        for name, dtype in records.SCALAR_FIELDS.items():
            record[name] = dtype(record[name])
        yield record


def _normalise(record: Mapping[str, Any]) -> dict[str, Any]:
    """Cast a valid record to the stored dtypes; drop keys that are not features."""
    out: dict[str, Any] = {"clip_id": str(record["clip_id"])}
    for name, dtype in records.SCALAR_FIELDS.items():
        out[name] = dtype(record[name])
    for name, (_, dtype) in records.TENSOR_FIELDS.items():
        out[name] = np.ascontiguousarray(np.asarray(record[name]).astype(dtype, copy=False))
    return out


def _spool(records_iter: Iterable[Mapping[str, Any]], spool_dir: Path) -> tuple[dict[str, int], list]:
    spool_dir.mkdir(parents=True)
    counts: dict[str, int] = {}
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for record in records_iter:
        clip = str(record.get("clip_id", "<no clip_id>"))
        try:
            records.validate_record(record)
        except records.RecordError as e:
            log.warning("skipping bad record: %s", e)
            skipped.append((clip, str(e)))
            continue
        if clip in seen:
            log.warning("skipping duplicate clip_id %r", clip)
            skipped.append((clip, "duplicate clip_id"))
            continue
        seen.add(clip)
        split = str(record.get("split") or DEFAULT_SPLIT)
        if split not in counts:
            if not split.isidentifier():
                raise ValueError(f"record {clip!r}: split name {split!r} must be an identifier")
            (spool_dir / split).mkdir()
            counts[split] = 0
        record = _normalise(record)
        record["clip_id"] = np.asarray(record["clip_id"])  # a unicode array, no pickle needed
        np.savez(spool_dir / split / f"{counts[split]:09d}.npz", **record)
        counts[split] += 1
    return counts, skipped


def _index_entry(record: Mapping[str, Any]) -> dict[str, Any]:
    frames_only = records.is_frames_only(record)
    video = np.asarray(record["frames"] if frames_only else record["latents"])
    num_frames = int(record["num_frames"])
    return dict(
        bucket=int(record["bucket"]),
        frames_only=frames_only,
        shape=video.shape,  # (T, h, w, C) latents or (F, H, W, 3) frames
        num_frames=num_frames,
        text_valid=bool(np.any(np.asarray(record["text_mask"]))),
        audio_eligible=bool(record["audio_eligible"]),
        pose_eligible=bool(record["pose_eligible"]),
        motion_eligible=records.latent_frames_for(num_frames) >= masking.MIN_MOTION_LATENT_FRAMES,
        valid=True,
    )


_INVALID_ENTRY = dict(
    bucket=-1,
    frames_only=False,
    shape=(0, 0, 0, 0),
    num_frames=0,
    text_valid=False,
    audio_eligible=False,
    pose_eligible=False,
    motion_eligible=False,
    valid=False,
)


def scan_index(source: Any) -> dict[str, np.ndarray]:
    """Decode every record of a data source and return its index arrays (a bad record gets valid=False)."""
    entries = []
    for i in range(len(source)):
        try:
            record = source[i]
            records.validate_record(record)
            entries.append(_index_entry(record))
        except Exception as e:  # a corrupt record of any kind is counted, not fatal
            log.warning("record %d is unreadable or invalid, excluded: %s", i, e)
            entries.append(_INVALID_ENTRY)
    keys = _INVALID_ENTRY.keys()
    index = {k: np.array([e[k] for e in entries]) for k in keys if k != "shape"}
    index["shape"] = np.array([e["shape"] for e in entries], np.int64).reshape(len(entries), 4)
    return index


def _write_index(version_dir: Path, splits: Iterable[str]) -> None:
    builder = tfds.builder_from_directory(version_dir)
    arrays = {}
    for split in splits:
        for key, value in scan_index(builder.as_data_source(split)).items():
            arrays[f"{split}/{key}"] = value
    np.savez(version_dir / INDEX_FILE, **arrays)


def _swap_in(new_dir: Path, final_dir: Path) -> None:
    """Rename `new_dir` to `final_dir`; an old `final_dir` is deleted only once the new one is in place."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    backup = final_dir.parent / f".{final_dir.name}.old-{uuid.uuid4().hex[:8]}"
    had_old = final_dir.exists()
    if had_old:
        os.rename(final_dir, backup)
    try:
        os.rename(new_dir, final_dir)
    except BaseException:
        if had_old:
            os.rename(backup, final_dir)
        raise
    if had_old:
        shutil.rmtree(backup, ignore_errors=True)


def write_dataset(
    records_iter: Iterable[Mapping[str, Any]],
    data_dir: str | os.PathLike,
    name: str = DEFAULT_NAME,
) -> WriteReport:
    """Validate, shuffle (TFDS, at write time) and store records as `data_dir/<name>/<DATASET_VERSION>`.

    Records carry an optional `split` key (default "train"). Invalid or duplicate records are skipped and
    listed in the report. Raises ValueError when no record is valid; the existing dataset is then kept.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        counts, skipped = _spool(records_iter, tmp / "spool")
        if not counts:
            raise ValueError(
                f"no valid record to write to {data_dir / name} ({len(skipped)} skipped"
                + (f", first: {skipped[0][1]}" if skipped else "")
                + "); the existing dataset, if any, is kept"
            )
        builder = builder_class(name)(
            spool_dir=tmp / "spool",
            splits=sorted(counts),
            data_dir=str(tmp / "tfds"),
            file_format="array_record",
        )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                compute_stats=tfds.download.ComputeStatsMode.SKIP, try_download_gcs=False
            )
        )
        built = tmp / "tfds" / name / DATASET_VERSION
        _write_index(built, counts)
        final = data_dir / name / DATASET_VERSION
        _swap_in(built, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s: %s records, %d skipped", final, counts, len(skipped))
    return WriteReport(dataset_dir=str(final), num_records=counts, skipped=skipped)


def dataset_version_dir(data_dir: str | os.PathLike, name: str = DEFAULT_NAME) -> Path:
    """The newest built version folder of `name` under `data_dir`, with a clear error when there is none."""
    root = Path(data_dir) / name
    versions = (
        sorted(
            (p for p in root.iterdir() if (p / "dataset_info.json").exists()),
            key=lambda p: tuple(int(x) for x in p.name.split(".")) if p.name[0].isdigit() else (-1,),
        )
        if root.is_dir()
        else []
    )
    if not versions:
        raise FileNotFoundError(
            f"no built dataset {name!r} under {data_dir}; build one with "
            f"`python -m data_pipeline.build --manifest M --out {data_dir}` or clear config.data.dir "
            "to train on the synthetic source"
        )
    return versions[-1]


def open_data_source(data_dir: str | os.PathLike, name: str = DEFAULT_NAME, split: str = DEFAULT_SPLIT):
    """Random-access source of decoded record dicts (numpy) for grain."""
    version_dir = dataset_version_dir(data_dir, name)
    builder = tfds.builder_from_directory(version_dir)
    if split not in builder.info.splits:
        raise ValueError(f"dataset {version_dir} has no split {split!r}; it has {list(builder.info.splits)}")
    return builder.as_data_source(split)


def load_index(data_dir: str | os.PathLike, name: str, split: str, source: Any) -> dict[str, np.ndarray]:
    """The record index of a split: from `record_index.npz`, or by scanning the source when it is absent."""
    path = dataset_version_dir(data_dir, name) / INDEX_FILE
    if path.exists():
        with np.load(path) as z:
            index = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(f"{split}/")}
        if index and len(index["valid"]) == len(source):
            return index
    log.warning("no usable %s for %s/%s split %s; scanning all records", INDEX_FILE, data_dir, name, split)
    return scan_index(source)
