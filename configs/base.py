"""The shared config every stage file builds on. Plain data: no imports from the library.

Stages follow section 3.3 of the OmniHuman-1 paper: stage 1 trains text + reference, stage 2 adds audio,
stage 3 adds pose. Condition ratios default to the paper's ablations (section 4.3): reference 0.7,
audio 0.5, pose 0.5, text higher than reference (Principle 2: the stronger the condition, the lower
its ratio).
"""

from __future__ import annotations

import ml_collections

from configs.presets import PRESETS

STAGE_RATIOS = {
    1: dict(text=0.9, reference=0.7, audio=0.0, pose=0.0, motion=0.3),
    2: dict(text=0.9, reference=0.7, audio=0.5, pose=0.0, motion=0.3),
    3: dict(text=0.9, reference=0.7, audio=0.5, pose=0.5, motion=0.3),
}


def model_config() -> ml_collections.ConfigDict:
    """Model fields with their defaults; presets override them."""
    return ml_collections.ConfigDict(
        dict(
            hidden_size=64,
            num_heads=2,
            num_dual_blocks=1,
            num_single_blocks=1,
            num_refiner_blocks=1,
            mlp_ratio=4.0,
            patch_size=2,
            latent_channels=4,
            text_dim=32,
            pooled_text_dim=0,  # 0: no pooled-text vector (HunyuanVideo uses 768, from CLIP)
            guidance_embeds=False,  # HunyuanVideo's distilled guidance embedding
            rope_theta=256.0,
            rope_axes_dim=(8, 12, 12),  # (t, h, w) bands; they sum to the head dim
            audio_layers=2,  # wav2vec2 hidden layers kept per frame
            audio_dim=16,  # feature width per layer
            audio_hidden=64,  # audio MLP width
            audio_window=1,  # +/- k adjacent video frames concatenated
            audio_tokens_per_frame=1,  # tokens per video frame; a latent frame has 4x this
            pose_channels=21,
            pose_heatmap_scale=2,  # heatmaps are rendered at (h * s, w * s)
            pose_guider_channels=(8, 16),
            pose_feature_channels=4,
            pose_window=1,  # +/- adjacent latent frames concatenated
            motion_hold=True,  # the last motion frame's latent is also stacked on the frames to predict
            # True: each block's audio update applies only in the mouth region (batch key `audio_region`, from
            # the mouth landmarks; launch.sample takes it from --pose), as HunyuanVideo-Avatar's face-aware
            # audio adapter masks its audio attention; see docs/learning_proof_history.md, session 16
            audio_gate=False,
            # True: a learned embedding per audio-token slot of a latent frame (which video frame, which
            # token), so the audio cross-attention can tell a latent frame's 4 video frames apart
            audio_frame_pos=False,
            dtype="float32",  # compute dtype; bf16 on accelerators
            param_dtype="float32",
            attention="auto",  # auto | xla | blocked | cudnn | splash
            remat="none",  # none | full | save_dots | save_qkv_proj | offload
            scan_layers=False,
        )
    )


def get_base_config(stage: int, preset: str) -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if stage not in STAGE_RATIOS:
        raise ValueError(f"unknown stage {stage!r}; choose 1, 2 or 3")
    cfg = ml_collections.ConfigDict()
    cfg.stage = stage
    cfg.preset = preset
    cfg.seed = 0
    cfg.total_steps = 100
    cfg.profile_steps = ""  # "START:END": write a JAX profiler trace of those steps to WORKDIR/profile
    cfg.max_nonfinite_steps = 10  # consecutive non-finite steps before the job stops (0: never)
    cfg.loss_spike_factor = 5.0  # log a spike when loss > this x the running mean (0: off)
    cfg.loss_spike_window = 50  # steps in that running mean

    cfg.model = model_config()
    cfg.model.update(PRESETS[preset]["model"])

    # Latent shape of synthetic batches and of shape-dependent tools (benchmarks, compile).
    cfg.shape = ml_collections.ConfigDict(PRESETS[preset]["shape"])

    cfg.condition_ratios = ml_collections.ConfigDict(STAGE_RATIOS[stage])

    cfg.flow = ml_collections.ConfigDict(
        dict(
            logit_mean=0.0,
            logit_std=1.0,
            shift=1.0,  # resolution-dependent timestep shift; 0 means: derive from base_shift_tokens
            base_shift_tokens=0,  # when > 0, shift = sqrt(tokens / base_shift_tokens)
            loss_weighting="none",  # none | cosmap
            motion_weight=0.0,  # > 0: weight latent positions by their change over time (flow_matching)
            motion_noise=0.0,  # > 0: max sigma of Gaussian noise on the stacked motion latents in training
            # > 0: the loss weight of latent positions in the mouth region is 1 + lip_weight (the batch then
            # carries `lip_mask`, from the clips' mouth landmarks; clips without keypoints weight nothing)
            lip_weight=0.0,
            # The same for the hands (`hand_mask`, from the hand landmarks): the pose-driven motion.
            hand_weight=0.0,
            num_timestep_buckets=4,
        )
    )

    cfg.optimizer = ml_collections.ConfigDict(
        dict(
            lr=1e-4,
            warmup_steps=10,
            decay_steps=0,  # 0: decay to the end of training
            end_lr_factor=0.1,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.01,
            grad_clip=1.0,
            ema_decay=0.999,
            grad_accum_steps=1,
            # "REGEX=MULT,...": parameters whose path ('transformer_blocks_0/audio_attn/to_out/kernel')
            # contains REGEX train at MULT x the rate, e.g. "audio_=10" for the audio modules a stage adds.
            lr_multipliers="",
        )
    )

    cfg.batch_size = 2  # global batch
    cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, context=1, tensor=1))  # context: sequence
    cfg.sharding = ml_collections.ConfigDict(
        dict(
            logical_axis_rules=(
                ("batch", ("data", "fsdp")),
                ("length", None),
                ("embed", "fsdp"),
                ("mlp", "tensor"),
                ("heads", "tensor"),
                ("kv", None),
                ("conv_in", None),
                ("conv_out", None),
                ("norm", None),
                ("null", None),
                ("layers", None),
                ("act_batch", ("data", "fsdp")),
                ("act_length", "context"),
                ("act_embed", None),
                ("act_mlp", "tensor"),
                ("act_heads", "tensor"),
            )
        )
    )

    cfg.checkpoint = ml_collections.ConfigDict(
        dict(
            every_steps=50,
            max_to_keep=3,
            async_save=True,
            init_from="",  # an earlier stage's workdir or checkpoint: matching params load
        )
    )
    cfg.metrics = ml_collections.ConfigDict(dict(every_steps=1, peak_flops_per_device=0.0, tensorboard=True))

    cfg.data = ml_collections.ConfigDict(
        dict(
            dir="",  # TFDS data dir(s), comma-separated; empty: the synthetic source
            name="omnihuman_clips",
            weights="",  # per-dir mixture weights for this stage, comma-separated; empty: equal
            split="train",
            worker_count=0,
            worker_buffer_size=2,
            shuffle=True,
            motion_frames=5,  # video frames given as motion frames (latent frames 0 and 1)
        )
    )
    # diffusers-format VAE folder, the video frames per chunk of online encoding (0: whole clip), and the
    # VAE's spatial compression (pixels per latent pixel; checked against the VAE folder when it is loaded)
    cfg.vae = ml_collections.ConfigDict(dict(path="", chunk_frames=0, spatial_compression_ratio=8))
    return cfg
