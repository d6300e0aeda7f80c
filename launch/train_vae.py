"""Train the causal 3D VAE on a frames-only dataset and export it in diffusers format.

  python -m launch.train_vae --data_dir=D --workdir=W --config.total_steps=200

The dataset is one built by `python -m data_pipeline.build` without `--vae` (records hold RGB frames).
Each step draws `batch_size` clips (a seeded permutation per epoch, so the iterator state is the step),
crops `clip_frames` (1 + 4k) consecutive frames and trains the VAE of `omnihuman_jax.vae_train_step`
(L1 + SSIM + KL, and optional motion- and landmark-region-weighted L1s and an L1 of the frame-to-frame
changes over the landmark regions: `loss.motion_l1`, `loss.region_l1`, `loss.temporal_l1`; with
`video_lr_restart` the clip phase gets a learning-rate schedule of its own). Orbax checkpoints go to
W/checkpoints every `checkpoint_every` steps; running again resumes from the newest. At the end the
latent statistics are measured (so the exported config's shift/scaling factors give unit-variance
latents) and the VAE is written to `--out` (default W/vae) as an `AutoencoderKLHunyuanVideo` folder that
`omnihuman_jax.interop.diffusers_vae.load_vae`, the data builder (`--vae`) and the trainer
(`--config.vae.path`) read. Any config value can be overridden with --config.KEY=VALUE.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from omnihuman_jax import xla_env


def default_config() -> ml_collections.ConfigDict:
    """VAE architecture, loss, optimiser and data settings (a small VAE for 64x64 toy-world clips)."""
    return ml_collections.ConfigDict(
        dict(
            seed=0,
            total_steps=200,
            stop_at=0,  # > 0: checkpoint and stop at this step without exporting (resume later)
            batch_size=2,
            clip_frames=5,  # video frames per training crop, 1 + 4k
            # The first `image_steps` steps train on single frames (a random frame of each clip): the
            # causal VAE's first-frame path, i.e. every spatial layer, at about a quarter of a 5-frame
            # step's cost; the usual image-then-video curriculum of video VAEs. 0: clips from the start.
            image_steps=0,
            # Entering the video phase (and at export, if it was never entered), every 3D kernel is
            # causally inflated (vae_train_step.inflate_causal): the image phase trains only the sum of each
            # kernel's temporal taps, and clips trained from its leftover random taps learn to repeat
            # frame 0. With it each latent frame starts as the image code of its last frame.
            causal_inflation=True,
            # The video phase restarts the learning-rate schedule (warmup, then cosine over its own steps).
            # Off, one schedule spans both phases, and the clips train at its decayed tail.
            video_lr_restart=False,
            crop_size=0,  # square spatial crop (a multiple of 8; 0: whole frames); the VAE is convolutional
            block_out_channels=(8, 16, 32, 32),
            # Spatial halvings go in the first log2(ratio) blocks: 8 (the usual video-VAE ratio) or 4,
            # which gives a 64x64 frame a 16x16 latent so that features a few pixels wide keep their own
            # latent pixels.
            spatial_compression_ratio=8,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            mid_block_add_attention=False,
            # region_l1: an L1 over boxes around the mouth and hand landmarks of each frame (records
            # without keypoints add none), normalised like motion_l1; `region_margin` widens each box by
            # this fraction of the frame's short side. temporal_l1: an L1 of the frame-to-frame changes over
            # the same boxes, so the mouth's movement within a latent frame's 4 video frames counts.
            loss=dict(l1=1.0, ssim=0.2, kl=1e-6, motion_l1=0.0, region_l1=0.0, temporal_l1=0.0),
            region_margin=0.03,
            optimizer=dict(
                lr=2e-3,
                warmup_steps=10,
                decay_steps=0,
                end_lr_factor=0.1,
                b1=0.9,
                b2=0.99,
                eps=1e-8,
                weight_decay=0.0,
                grad_clip=1.0,
            ),  # fmt: skip
            mesh=dict(data=-1, fsdp=1, tensor=1),
            logical_axis_rules=(
                ("batch", ("data", "fsdp")),
                ("conv_in", None),
                ("conv_out", None),
                ("norm", None),
                ("null", None),
            ),
            checkpoint_every=50,
            log_every=10,
            stats_batches=4,  # batches whose posterior means set shift_factor / scaling_factor
            data_name="omnihuman_clips",
            split="train",
        )
    )


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this CLI's flags; called only when it runs as a program, so importing it (tests,
    other tools) never clashes with another CLI's flags of the same name."""
    config_flags.DEFINE_config_dict(
        "config", default_config(), "VAE training settings (override with --config.KEY=VALUE)."
    )
    flags.DEFINE_string("data_dir", None, "TFDS data dir of a frames-only dataset (built without --vae).")
    flags.DEFINE_string("workdir", None, "Run folder: checkpoints/ and vae_metrics.jsonl.")
    flags.DEFINE_string(
        "out", "", "Where the trained VAE is written (diffusers format); default WORKDIR/vae."
    )


class ClipFrames:
    """Deterministic batches of uint8 clips (B, clip_frames, H, W, 3) from frames-only records."""

    def __init__(
        self,
        data_dir: str,
        name: str,
        split: str,
        batch_size: int,
        clip_frames: int,
        seed: int,
        crop: int = 0,
        region_margin: float | None = None,
    ):
        from data_pipeline.tfds_builder import open_data_source

        self.source = open_data_source(data_dir, name, split)
        self.batch_size, self.clip_frames, self.seed, self.crop = batch_size, clip_frames, seed, crop
        # None: frames only. Otherwise each clip also gets its landmark region map (mouth and hands boxes
        # widened by `region_margin` of the frame's short side; zeros for a record without keypoints).
        self.region_margin = region_margin
        if crop % 8:
            raise ValueError(
                f"crop_size={crop} must be a multiple of 8 (the VAE's spatial compression), or 0"
            )
        if (clip_frames - 1) % 4:
            raise ValueError(f"clip_frames={clip_frames} must be 1 + 4k (e.g. 5 or 9)")
        if len(self.source) < batch_size:
            raise ValueError(f"{data_dir}: {len(self.source)} records, fewer than batch_size={batch_size}")
        first = self.source[0]
        if np.asarray(first["frames"]).shape[0] == 0:
            raise ValueError(f"{data_dir} stores latents, not frames; build the VAE's dataset without --vae")
        self.step = 0

    def _clip(self, record: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        frames = np.asarray(record["frames"])  # (F, H, W, 3)
        if frames.shape[0] < self.clip_frames:
            raise ValueError(
                f"record has {frames.shape[0]} frames, fewer than clip_frames={self.clip_frames}"
            )
        start = int(rng.integers(frames.shape[0] - self.clip_frames + 1))
        clip = frames[start : start + self.clip_frames]  # (clip_frames, H, W, 3)
        h, w = clip.shape[1:3]
        region = None
        if self.region_margin is not None:
            region = self._region(np.asarray(record["keypoints"]), start, h, w)  # (clip_frames, H, W)
        if self.crop and (self.crop < h or self.crop < w):
            ch, cw = min(self.crop, h), min(self.crop, w)
            y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            clip = clip[:, y : y + ch, x : x + cw]
            region = None if region is None else region[:, y : y + ch, x : x + cw]
        return clip, region

    def _region(self, keypoints: np.ndarray, start: int, h: int, w: int) -> np.ndarray:
        from data_pipeline.heatmaps import landmark_regions

        if keypoints.shape[0] == 0:
            return np.zeros((self.clip_frames, h, w), np.float32)
        kp = keypoints[start : start + self.clip_frames]
        return landmark_regions(kp, h, w, margin=self.region_margin * min(h, w))

    def batch_with_regions(self, step: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Clips (B, F, H, W, 3) uint8 and their region maps (B, F, H, W) (None without `region_margin`)."""
        n = len(self.source)
        per_epoch = n // self.batch_size
        epoch, pos = divmod(step, per_epoch)
        order = np.random.default_rng([self.seed, 0x0AE, epoch]).permutation(n)
        rng = np.random.default_rng([self.seed, 0x0AE, epoch, pos, 1])
        idx = order[pos * self.batch_size : (pos + 1) * self.batch_size]
        clips, regions = zip(*(self._clip(self.source[int(i)], rng) for i in idx), strict=True)
        return np.stack(clips), (None if regions[0] is None else np.stack(regions))

    def batch(self, step: int) -> np.ndarray:
        return self.batch_with_regions(step)[0]  # (B, F, H, W, 3)

    def __next__(self) -> tuple[np.ndarray, np.ndarray | None]:
        out = self.batch_with_regions(self.step)
        self.step += 1
        return out

    def get_state(self) -> dict[str, int]:
        return {"step": self.step}

    def set_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


def curriculum_frames(clips: np.ndarray, step: int, image_steps: int) -> np.ndarray:
    """The image-then-video curriculum: (B, F, H, W, 3) clips -> their first frame before `image_steps`.

    Each clip starts at a random frame of its record, so the first frame is a random frame.
    """
    return clips[:, :1] if step < image_steps else clips  # (B, 1 or F, H, W, 3)


def vae_config_from(config: Any):
    from omnihuman_jax.models.vae import VAEConfig

    return VAEConfig(
        latent_channels=config.latent_channels,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        mid_block_add_attention=config.mid_block_add_attention,
        spatial_compression_ratio=config.spatial_compression_ratio,
        scaling_factor=1.0,
    )


def train_vae(config: Any, data_dir: str, workdir: str, out: str = "") -> dict[str, Any]:
    """Trains (or resumes) to `config.total_steps`, exports the VAE, returns the last metrics.

    One job at a time holds WORKDIR (checkpointing.workdir_lock); a second fails with CheckpointError.
    """
    from omnihuman_jax.checkpointing import workdir_lock

    with workdir_lock(workdir):
        return _train_vae(config, data_dir, workdir, out)


def check_loss_config(config: Any) -> None:
    """Fails at start, naming the key, on a negative loss weight or region margin."""
    for key, value in [
        *((f"loss.{k}", v) for k, v in dict(config.loss).items()),
        ("region_margin", config.region_margin),
    ]:
        if not float(value) >= 0:
            raise ValueError(f"{key}={value}: must be >= 0 (0 turns a loss term off)")


def build_training(config: Any) -> tuple[Any, Any, Any, Any, Any]:
    """(vae config, mesh, fresh train state, its shardings, jitted step) from a train_vae config."""
    from omnihuman_jax import sharding as shd
    from omnihuman_jax import vae_train_step as vts

    cfg = vae_config_from(config)
    mesh = shd.make_mesh(dict(config.mesh))
    restart_at = config.image_steps if config.video_lr_restart else 0
    optimizer = vts.make_vae_optimizer(config.optimizer, config.total_steps, restart_at)
    state, shardings = vts.init_vae_train_state(cfg, optimizer, config.seed, mesh, config.logical_axis_rules)
    lr_fn = vts.vae_lr_schedule(config.optimizer, config.total_steps, restart_at)
    weights = vts.VAELossWeights(**dict(config.loss))
    step_fn = vts.jit_vae_train_step(
        vts.make_vae_train_step(cfg, optimizer, weights, config.seed, lr_fn),
        shardings,
        mesh,
        with_region=weights.needs_region,
    )
    return cfg, mesh, state, shardings, step_fn


def _train_vae(config: Any, data_dir: str, workdir: str, out: str) -> dict[str, Any]:
    check_loss_config(config)
    import jax

    from omnihuman_jax import sharding as shd
    from omnihuman_jax import vae_train_step as vts
    from omnihuman_jax.checkpointing import Checkpointer
    from omnihuman_jax.interop.diffusers_vae import save_vae
    from omnihuman_jax.train_state import abstract_state

    out = out or os.path.join(workdir, "vae")
    os.makedirs(workdir, exist_ok=True)
    cfg, mesh, state, shardings, step_fn = build_training(config)
    data = ClipFrames(
        data_dir,
        config.data_name,
        config.split,
        config.batch_size,
        config.clip_frames,
        config.seed,
        crop=config.crop_size,
        region_margin=config.region_margin if vts.VAELossWeights(**dict(config.loss)).needs_region else None,
    )
    ckpt = Checkpointer(workdir, max_to_keep=2)
    meta = {"config": json.loads(config.to_json_best_effort()), "vae_config": cfg.to_diffusers()}
    last: dict[str, Any] = {}
    try:
        restored = ckpt.restore_latest(abstract_state(state, shardings))
        if restored is not None:
            step, state, data_state, _ = restored
            data.set_state(data_state)
            print(f"resumed VAE training from step {step}", flush=True)
        step = int(jax.device_get(state.step))
        with open(os.path.join(workdir, "vae_metrics.jsonl"), "a") as log_file:
            t0 = time.perf_counter()
            end = min(config.stop_at or config.total_steps, config.total_steps)
            inflate = jax.jit(vts.inflate_causal, out_shardings=shardings.params)
            while step < end:
                if config.causal_inflation and 0 < config.image_steps == step:
                    state = state.replace(params=inflate(state.params))
                    print(f"vae step {step}: causal inflation, video phase starts", flush=True)
                clips, regions = next(data)
                batch = {"frames": curriculum_frames(clips, step, config.image_steps)}
                if regions is not None:
                    batch["region"] = curriculum_frames(regions, step, config.image_steps)
                state, metrics = step_fn(state, *shd.shard_batch(batch, mesh).values())
                step += 1
                if step % config.log_every == 0 or step == config.total_steps:
                    last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    last.update(step=step, step_time_s=(time.perf_counter() - t0) / config.log_every)
                    t0 = time.perf_counter()
                    log_file.write(json.dumps(last) + "\n")
                    log_file.flush()
                    print(
                        f"vae step {step}: loss {last['loss']:.4f} "
                        f"l1 {last['l1']:.4f} ssim {last['ssim']:.4f}",
                        flush=True,
                    )
                if step % config.checkpoint_every == 0 or step == end:
                    ckpt.save(step, state, data.get_state(), {**meta, "step": step})
        ckpt.wait()
    finally:
        ckpt.close()
    if step < config.total_steps:
        print(f"stopped at step {step} of {config.total_steps} (config.stop_at); run again to resume")
        return last
    params = jax.device_get(state.params)
    if config.causal_inflation and 0 < config.total_steps <= config.image_steps:
        params = vts.inflate_causal(params)  # an image-only run: give its clip path the image code
    data.crop, data.region_margin = 0, None  # latent statistics of whole frames; no region maps needed
    stats_batches = [data.batch(10**6 + i) for i in range(max(1, config.stats_batches))]
    mean, std = vts.latent_statistics(cfg, params, stats_batches)
    scaled_cfg = vts.with_latent_scaling(cfg, mean, std)
    save_vae(out, scaled_cfg, params, overwrite=True)
    print(f"wrote VAE to {out} (latent mean {mean:.4f}, std {std:.4f})", flush=True)
    return last


def main(argv: list[str]) -> int:
    del argv
    if FLAGS["verbosity"].using_default_value:
        logging.set_verbosity(logging.WARNING)
    if not FLAGS.data_dir or not FLAGS.workdir:
        print("error: --data_dir and --workdir are required (see --help)", file=sys.stderr)
        return 2
    from omnihuman_jax.checkpointing import CheckpointError

    try:
        train_vae(FLAGS.config, FLAGS.data_dir, FLAGS.workdir, FLAGS.out)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    xla_env.apply()
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
