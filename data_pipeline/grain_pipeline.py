"""grain input pipeline: TFDS ArrayRecord clips to mixed-condition training batches (OmniHuman-1, 3.3).

Each sample activates its conditions at the stage's ratios among those its record supports
(`data_pipeline.masking`), takes its reference from a random candidate frame, may give its first latent
frames as motion frames, and has its dropped conditions zeroed. Batches follow docs/design.md.

Batches are planned, not streamed, so every batch is a pure function of its step:
- Records are grouped by (bucket, stored shape); every batch comes from one group, so it has one shape.
- Each process owns a static shard of every group (positions `process_index::process_count` of the
  group's records in stored order, which TFDS shuffled at write time): the shards are disjoint and cover
  the data. Every epoch a group yields `(len(group) // process_count) // local_batch` batches on every
  process, so all processes agree on the group of each step (one global shape per step). This is why
  the pipeline shards per group itself instead of with `grain.sharding.ShardByJaxProcess`, which cuts
  the whole index into contiguous ranges and would leave hosts with different buckets.
- Epoch `e` orders all groups' batches by a seeded permutation (groups are drawn in proportion to their
  data) and permutes each shard (`config.data.shuffle=False`: group after group, in stored order).
  Several data dirs mix by `config.data.weights` with grain's deterministic proportional interleave.
- Step `k`'s batch is `plan[k]`, so the iterator state is just `{"step": k, ...}` and `set_state`
  resumes exactly; grain threads or worker processes (`config.data.worker_count`) prefetch it.

A record that fails to decode or to match the config is skipped, replaced by the next record of the same
shard, and counted in `TrainIterator.skipped_records` (also in the state).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import grain
import numpy as np

from data_pipeline import heatmaps, masking, records, tfds_builder
from data_pipeline.synthetic import local_batch_size
from omnihuman_jax.batch import landmark_mask_keys

log = logging.getLogger(__name__)

_ENDLESS = sys.maxsize // 8
_SKIPPED_KEY = "_skipped_records"


class _Plan:
    """Batch index -> (group, candidate record indices) for one process of one data dir.

    A pure function of the index; the per-epoch permutations are cached behind a lock because grain
    calls it from several threads at once.
    """

    def __init__(
        self,
        members: list[np.ndarray],
        local_batch: int,
        seed: int,
        dataset_id: int,
        process: tuple,
        shuffle: bool = True,
    ):
        process_index, process_count = process
        self.shuffle = shuffle
        self.local = [m[process_index::process_count] for m in members]  # static shard per group
        self.batches = np.array([(len(m) // process_count) // local_batch for m in members])
        self.local_batch, self.seed, self.dataset_id = local_batch, seed, dataset_id
        self.per_epoch = int(self.batches.sum())
        self._cache: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_cache")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _cache={}, _lock=threading.Lock())

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, 0xDA7A, self.dataset_id, *key])

    def _order(self, epoch: int) -> np.ndarray:
        """(2, per_epoch): the group of each batch of the epoch and its rank among that group's batches."""
        seq = np.repeat(np.arange(len(self.batches)), self.batches)
        if self.shuffle:
            seq = self._rng(epoch).permutation(seq)
        ranks = np.zeros_like(seq)
        for g in range(len(self.batches)):
            ranks[seq == g] = np.arange(self.batches[g])
        return np.stack([seq, ranks])

    def _cached(self, key: tuple, make) -> np.ndarray:
        with self._lock:
            if key not in self._cache:
                if len(self._cache) > 4 * len(self.batches) + 8:  # keep about two epochs
                    self._cache = {k: v for k, v in self._cache.items() if k[0] >= key[0] - 1}
                self._cache[key] = make()
            return self._cache[key]

    def __getitem__(self, j: int) -> tuple[int, np.ndarray]:
        epoch, pos = divmod(j, self.per_epoch)
        order = self._cached((epoch,), lambda: self._order(epoch))
        g, m = int(order[0, pos]), int(order[1, pos])
        if self.shuffle:
            perm = self._cached((epoch, g), lambda: self._rng(epoch, g).permutation(self.local[g]))
        else:  # every epoch reads each shard in stored order (TFDS shuffled it once, at write time)
            perm = self.local[g]
        start = m * self.local_batch
        # The batch first, then the rest of the shard as replacements for bad records.
        return g, np.concatenate([perm[start:], perm[:start]])


class _BatchLoader:
    """(step, (dataset id, batch index)) -> one process-local batch; runs in grain threads or workers."""

    def __init__(self, config: Any, sources: list, plans: list[_Plan], group_keys: list, process: tuple):
        m, s = config.model, config.shape
        self.sources, self.plans, self.group_keys = sources, plans, group_keys
        self.seed = int(config.seed)
        self.ratios = masking.ratios_vector(config.condition_ratios)
        self.motion_frames = int(config.data.motion_frames)
        self.text_len, self.text_dim = int(s.text_len), int(m.text_dim)
        self.audio_dims = (int(m.audio_layers), int(m.audio_dim))
        self.channels, self.scale = int(m.latent_channels), int(m.pose_heatmap_scale)
        # Frames-only datasets: heatmaps at (H / r * s, W / r * s), as the online-encoded latents will be.
        self.vae_ratio = int(config.get("vae", {}).get("spatial_compression_ratio", 8))
        self.region_masks = landmark_mask_keys(config)
        self.batch_size = int(config.batch_size)
        self.local_batch = local_batch_size(self.batch_size, process[1])
        self.first_sample = process[0] * self.local_batch

    def __call__(self, step: int, element: tuple[int, int]) -> dict[str, np.ndarray]:
        d, j = element
        g, candidates = self.plans[d][j]
        key = self.group_keys[d][g]
        samples, skipped = [], 0
        for idx in candidates:
            if len(samples) == self.local_batch:
                break
            sample_index = step * self.batch_size + self.first_sample + len(samples)
            try:
                samples.append(self._sample(self.sources[d][int(idx)], key, sample_index))
            except Exception as e:  # a corrupt or mismatched record of any kind: skip and count
                skipped += 1
                log.warning("skipping record %d of data dir %d: %s", idx, d, e)
        if len(samples) < self.local_batch:
            raise RuntimeError(f"group {key} of data dir {d} has too few readable records for a batch")
        batch = {k: np.stack([x[k] for x in samples]) for k in samples[0]}
        batch[_SKIPPED_KEY] = np.int64(skipped)
        return batch

    def _check(self, record: dict, key: tuple, num_frames: int) -> None:
        records.validate_record(record)
        frames_only = records.is_frames_only(record)
        video = record["frames"] if frames_only else record["latents"]
        if (int(record["bucket"]), frames_only, *video.shape) != key:
            raise ValueError(f"record shape {video.shape} does not match its index group {key}")
        if record["text_embedding"].shape[0] and record["text_embedding"].shape[1] != self.text_dim:
            raise ValueError(f"text_embedding width {record['text_embedding'].shape[1]} != model.text_dim")
        audio = record["audio_features"]
        if audio.shape[0] and audio.shape[1:] != self.audio_dims:
            raise ValueError(f"audio_features {audio.shape[1:]} != (model.audio_layers, model.audio_dim)")
        if not frames_only and video.shape[-1] != self.channels:
            raise ValueError(
                f"latents have {video.shape[-1]} channels, model.latent_channels={self.channels}"
            )

    def _sample(self, record: dict, key: tuple, sample_index: int) -> dict[str, np.ndarray]:
        num_frames = int(record["num_frames"])
        self._check(record, key, num_frames)
        frames_only = records.is_frames_only(record)
        t = records.latent_frames_for(num_frames)
        eligible = masking.eligibility_from_record(record, t)
        mask = masking.sample_condition_mask(self.seed, sample_index, self.ratios, eligible)
        ref_rng = masking.sample_rng(self.seed, sample_index, masking.SALT_REFERENCE)
        out: dict[str, np.ndarray] = {}
        if frames_only:
            frames = record["frames"]  # (F, H, W, 3)
            candidates = (
                record["ref_frame_index"] if record["ref_frame_index"].size else np.arange(num_frames)
            )
            i = int(candidates[ref_rng.integers(len(candidates))])
            out["frames"], out["ref_frame"] = frames, frames[i : i + 1].copy()  # (1, H, W, 3)
            h, w = frames.shape[1] // self.vae_ratio, frames.shape[2] // self.vae_ratio
        else:
            r = int(ref_rng.integers(record["ref_latents"].shape[0]))
            out["latents"], out["ref_latents"] = record["latents"], record["ref_latents"][r : r + 1].copy()
            h, w = record["latents"].shape[1:3]
        text_emb = np.zeros((self.text_len, self.text_dim), np.float32)  # (L, D_text), padded or cut
        text_mask = np.zeros(self.text_len, bool)
        n = min(self.text_len, record["text_mask"].shape[0])
        if n:  # a clip built without a text encoder has a (0, 0) embedding: no valid token
            text_emb[:n], text_mask[:n] = record["text_embedding"][:n], record["text_mask"][:n]
        out["text_emb"], out["text_mask"] = text_emb, text_mask
        audio = record["audio_features"]
        out["audio_feats"] = (
            audio.astype(np.float32)
            if audio.shape[0]
            else np.zeros((num_frames, *self.audio_dims), np.float32)
        )
        hm_size = (h * self.scale, w * self.scale)
        if mask[3]:
            out["pose_heatmaps"] = heatmaps.render_heatmaps(record["keypoints"], *hm_size)
        else:
            out["pose_heatmaps"] = np.zeros((num_frames, *hm_size, heatmaps.NUM_CHANNELS), np.float32)
        kp, rasterised = record["keypoints"], {}  # lip_mask and audio_region share one rasterisation
        for key in self.region_masks:  # from the landmarks whether or not pose is a condition of this sample
            fn = heatmaps.LATENT_REGIONS[key]
            if fn not in rasterised:
                rasterised[fn] = fn(kp, h, w) if kp.shape[0] else np.zeros((t, h, w), np.float32)
            out[key] = rasterised[fn]
        out["motion_mask"], out["condition_mask"] = np.zeros(t, bool), mask
        masking.apply_condition_mask(out, mask, self.motion_frames)
        return out


class _Tag:
    """Batch index j of data dir d -> (d, j); a class, so grain worker processes can unpickle it."""

    def __init__(self, dataset_id: int):
        self.dataset_id = dataset_id

    def __call__(self, j: int) -> tuple[int, int]:
        return self.dataset_id, j


class TrainIterator:
    """Process-local batches with exact resume: state is the step, plus the skipped-record counter."""

    def __init__(self, dataset: grain.MapDataset, config: Any, summary: dict[str, Any]):
        self._dataset = dataset  # step -> batch, endless
        self._workers = int(config.data.worker_count)
        self._buffer = max(1, int(config.data.worker_buffer_size))
        self.summary = summary  # records, groups and batches per epoch, for logs
        self.step = 0
        self.skipped_records = 0
        self._it = None

    def __iter__(self) -> TrainIterator:
        return self

    def _open(self):
        ds = self._dataset[self.step :].to_iter_dataset(
            grain.ReadOptions(num_threads=self._buffer, prefetch_buffer_size=self._buffer)
        )
        if self._workers > 0:
            _ensure_absl_flags()
            ds = ds.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self._workers, per_worker_buffer_size=self._buffer)
            )
        return iter(ds)

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._it = self._open()
        batch = next(self._it)
        self.skipped_records += int(batch.pop(_SKIPPED_KEY))
        self.step += 1
        return batch

    def get_state(self) -> dict[str, int]:
        return {"step": self.step, "skipped_records": self.skipped_records}

    def set_state(self, state: dict[str, Any]) -> None:
        if "step" not in state:
            raise ValueError(f"data iterator state needs a 'step', got {state}")
        self.close()
        self.step = int(state["step"])
        self.skipped_records = int(state.get("skipped_records", 0))

    def close(self) -> None:
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None


def _ensure_absl_flags() -> None:
    """grain worker processes read absl flags; parse them when running outside absl.app.run."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv, known_only=True)


def _parse_dirs_and_weights(config: Any) -> tuple[list[str], list[float]]:
    dirs = [d.strip() for d in str(config.data.dir).split(",") if d.strip()]
    if not dirs:
        raise ValueError("config.data.dir is empty; use data_pipeline.synthetic.SyntheticSource instead")
    raw = [w.strip() for w in str(config.data.weights).split(",") if w.strip()]
    weights = [float(w) for w in raw] if raw else [1.0] * len(dirs)
    if len(weights) != len(dirs) or any(w <= 0 for w in weights):
        raise ValueError(
            f"config.data.weights={config.data.weights!r} needs one positive weight per data dir {dirs}"
        )
    return dirs, weights


def _groups(index: dict[str, np.ndarray]) -> tuple[list[tuple], list[np.ndarray]]:
    """Group valid records by (bucket, frames_only, *shape); keys sorted for determinism."""
    valid = np.flatnonzero(index["valid"])
    keys = [
        (int(index["bucket"][i]), bool(index["frames_only"][i]), *map(int, index["shape"][i])) for i in valid
    ]
    members: dict[tuple, list[int]] = {}
    for i, key in zip(valid, keys, strict=True):
        members.setdefault(key, []).append(int(i))
    ordered = sorted(members)
    return ordered, [np.array(members[k], np.int64) for k in ordered]


def _check_pools(config: Any, indexes: list[dict[str, np.ndarray]], dirs: list[str]) -> None:
    ratios = dict(zip(masking.CONDITIONS, masking.ratios_vector(config.condition_ratios), strict=True))
    for condition, field in (("text", "text_valid"), ("audio", "audio_eligible"), ("pose", "pose_eligible")):
        if ratios[condition] > 0 and not any(np.any(ix[field] & ix["valid"]) for ix in indexes):
            raise ValueError(
                f"stage {config.get('stage', '?')} trains {condition} (ratio {ratios[condition]:g}) but no "
                f"record in {dirs} is {condition}-eligible; add {condition}-eligible data, or set "
                f"condition_ratios.{condition}=0"
            )
    if ratios["motion"] > 0 and not any(np.any(ix["motion_eligible"] & ix["valid"]) for ix in indexes):
        log.warning(
            "condition_ratios.motion > 0 but no clip has >= %d latent frames; motion stays off",
            masking.MIN_MOTION_LATENT_FRAMES,
        )
    modes = {bool(m) for ix in indexes for m in ix["frames_only"][ix["valid"]]}
    if len(modes) > 1:
        raise ValueError(f"data dirs {dirs} mix latent and frames-only records; build them all one way")
    if ratios["pose"] > 0 and int(config.model.pose_channels) != heatmaps.NUM_CHANNELS:
        raise ValueError(f"model.pose_channels must be {heatmaps.NUM_CHANNELS} to train on keypoint heatmaps")
    if int(config.model.get("pooled_text_dim", 0)) > 0:
        raise ValueError("model.pooled_text_dim > 0 but the record table stores no pooled text embedding")


def make_train_iterator(config: Any, process_index: int = 0, process_count: int = 1) -> TrainIterator:
    """The training data source over the TFDS dataset(s) in `config.data.dir` (see module docstring)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must lie in [0, {process_count})")
    dirs, weights = _parse_dirs_and_weights(config)
    local_batch = local_batch_size(int(config.batch_size), process_count)
    name, split = str(config.data.name), str(config.data.split)
    sources, indexes = [], []
    for d in dirs:
        source = tfds_builder.open_data_source(d, name, split)
        index = tfds_builder.load_index(d, name, split, source)
        if len(source) == 0 or not index["valid"].any():
            raise ValueError(f"dataset {d}/{name} split {split!r} has no readable record; rebuild it")
        sources.append(source)
        indexes.append(index)
    _check_pools(config, indexes, dirs)
    plans, group_keys, summary = [], [], {"datasets": []}
    for d, index in enumerate(indexes):
        keys, members = _groups(index)
        process = (process_index, process_count)
        plan = _Plan(members, local_batch, int(config.seed), d, process, bool(config.data.shuffle))
        if plan.per_epoch == 0:
            raise ValueError(
                f"dataset {dirs[d]}: no bucket has batch_size={config.batch_size} records "
                f"(largest has {max(map(len, members))}); lower batch_size or add data"
            )
        small = [k for k, b in zip(keys, plan.batches, strict=True) if b == 0]
        if small:
            log.warning(
                "dataset %s: groups %s are smaller than one global batch and are not used", dirs[d], small
            )
        plans.append(plan)
        group_keys.append(keys)
        summary["datasets"].append(
            dict(
                dir=dirs[d],
                records=int(index["valid"].sum()),
                invalid=int((~index["valid"]).sum()),
                groups=len(keys),
                batches_per_epoch=plan.per_epoch,
            )
        )
    loader = _BatchLoader(config, sources, plans, group_keys, (process_index, process_count))
    tagged = [grain.MapDataset.range(_ENDLESS).map(_Tag(d)) for d in range(len(dirs))]
    mixed = tagged[0] if len(tagged) == 1 else grain.MapDataset.mix(tagged, weights)
    return TrainIterator(mixed.map_with_index(loader), config, summary)
