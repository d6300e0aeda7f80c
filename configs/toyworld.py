"""The toy-world recipe (OmniHuman-1 sections 3.3-3.4 at toy scale), as plain data for launch/toyworld.py.

Usage: `python -m launch.toyworld --workdir=W --recipe=quick|proof|smoke`; `get_config(arg)` returns it.

- `quick`: the main job, sized for 15 minutes on 2 CPU cores with the install: 24 identities (3 held out), a
  VAE trained 450 steps on single frames then 90 on 5-frame clips, the three stages briefly, one video of a
  held-out identity per driving mode, and the metrics table.
- `proof`: the learning proof, sized for 60 minutes: 40 identities x 2 clips (6 held out), longer runs;
  benchmarks/learning_proof.py adds the ablations under `ablations` and a VAE round-trip row that
  bounds what any sampled video can score.
- `smoke`: CI's 2-step run of every stage of the recipe.

Many identities with few clips each, rather than few with many, because both the VAE and the
reference condition must generalise to unseen identities; overlapping training windows (stride one
latent frame) multiply the clips cheaply. The model is the `toy` preset (2.4M parameters; 2 x 2 patches of
the latents of a VAE with 4x spatial compression).
The VAE trains on its own world (`vae_world`): many more identities with one short clip each, drawn
from another seed, so it holds none of the held-out identities. Trained on the main world's few
identities instead, the VAE reconstructed held-out faces at 14-22 dB static-region PSNR against 25-32 dB
on training faces (session 3; docs/learning_proof_history.md).

Principles (paper section 3.3): stage 1 trains reference (and text) only on all clips; stage 2 adds audio
on the clips that pass the lip-sync filter; stage 3 adds pose at a lower ratio than audio (Principle 2:
the stronger the condition, the lower its ratio: reference 0.7 > audio 0.5, and pose at most audio's).
Stage 3's pose ratio is 0.5, the paper's final configuration (section 4.3: 50% beat 20% and 80%) and
`configs/base.py`'s; at 0.25 the toy stage 3 placed the hands 1.4 px worse on held-out clips (session 13).
Each stage initialises from the previous one. Audio features are log-mel (16 bins x 2 sub-windows per
frame, the toy preset's audio_dim x audio_layers): no pretrained wav2vec2 exists offline. No text
encoder is used, so the text ratio is 0 and captions are unused. The world's clean-rate knobs are raised
above the paper's 13% so a tiny world has enough audio/pose clips; the filters still apply.
"""

from __future__ import annotations

import ml_collections

# Stage ratios: text off (no text encoder), reference 0.7, audio 0.5, pose 0.5, motion frames 0.3.
STAGE_RATIOS = {
    1: {"text": 0.0, "reference": 0.7, "audio": 0.0, "pose": 0.0, "motion": 0.3},
    2: {"text": 0.0, "reference": 0.7, "audio": 0.5, "pose": 0.0, "motion": 0.3},
    3: {"text": 0.0, "reference": 0.7, "audio": 0.5, "pose": 0.5, "motion": 0.3},
}

# Peak learning rate per stage. Stage 3 runs 4x the others': at 5e-4 it was under-trained. On the validation
# world (`launch.toyworld --validate`, never the evaluation identities) stage-3 rates 5e-4 / 1e-3 / 2e-3 /
# 4e-3 / 8e-3 placed the hands at 3.85 / 3.81 / 3.40 / 2.91 / 3.11 px; 4e-3 in all three stages scored 3.66
# px (session 14, docs/learning_proof_history.md). Session 20 halved it to 2e-3, since 4e-3 retrained the
# audio-driven mouth: from runs/p17's 2400-step stage 2, stage 3 at 4e-3 / 2e-3 / 1e-3 scored validation
# sync 0.502 / 0.572 / 0.579 with the hands at 1.83 / 1.98 / 2.60 px; 2e-3 keeps the hands well inside 3 px
# (docs/learning_proof.md, session 20).
STAGE_LR = {1: 5e-4, 2: 5e-4, 3: 2e-3}

# launch.train_vae loss weights shared by every recipe; a recipe's `vae["loss"]` overrides some of them.
VAE_LOSS = {"motion_l1": 1.0, "region_l1": 1.0, "temporal_l1": 5.0}

VAE_WORLD_SEED_OFFSET = 1000  # the VAE world's seed is the main world's plus this
VAL_WORLD_SEED_OFFSET = 2000  # the validation world's seed (`launch.toyworld --validate`)

RECIPES = {
    "smoke": dict(
        world=dict(
            num_identities=3,
            clips_per_identity=1,
            seconds=1.6,
            audio_clean_rate=1.0,
            pose_clean_rate=1.0,
            eval_identities=1,
        ),
        vae=dict(
            total_steps=2,
            image_steps=1,
            batch_size=2,
            block_out_channels=(8, 8, 8, 8),
            norm_num_groups=4,
            stats_batches=1,
        ),
        vae_world=dict(num_identities=3, seconds=1.0),
        steps=(2, 2, 2),
        sample_steps=2,
        eval_clips=1,
    ),
    "quick": dict(
        world=dict(num_identities=24, clips_per_identity=1, seconds=2.0, eval_identities=3),
        # Trimmed in session 18 (from a 720-step VAE and stages 250 / 600 / 500): timed in a fresh clone
        # in session 17 the job took 16 min 21 s with the install on a 2-core AMD EPYC. At either length
        # it shows the path, not the learning.
        vae=dict(total_steps=540, image_steps=450, batch_size=2),
        vae_world=dict(num_identities=240, seconds=1.0),
        steps=(200, 400, 350),
        sample_steps=10,
        eval_clips=1,
    ),
    "proof": dict(
        world=dict(num_identities=40, clips_per_identity=2, seconds=2.0, eval_identities=6),
        # 4500 single-frame steps: the 4x VAE's image step costs about 1.4x the 8x VAE's, and it reached
        # the 8x VAE's 3000-step L1 in 1500 steps.
        # loss.temporal_l1 30 (5 in the other recipes, untried at their lengths): from one image phase, the
        # proof's VAE at temporal_l1 5 / 20 / 30 / 50 round-tripped the validation world's 12 clips at sync
        # 0.672 / 0.692 / 0.831 / 0.783, kept 28 / 27 / 62 / 78% of the mouth's movement within a latent
        # frame, at 29.23 / 28.51 / 28.05 / 26.98 dB (session 21, docs/learning_proof.md).
        vae=dict(total_steps=5200, image_steps=4500, batch_size=2, loss=dict(temporal_l1=30.0)),
        vae_world=dict(num_identities=240, seconds=1.0),
        # Stage 2 ran 1200 steps until session 20. With stage 3 at 2e-3, 2400 stage-2 steps scored validation
        # sync 0.572 against 0.557 (better on 5 of the 6 clips), for about 9 more minutes of proof (the
        # no-audio ablation's stage 2 doubles too).
        steps=(500, 2400, 1000),
        sample_steps=20,
        eval_clips=6,  # 3 clips left PSNR 1.9 dB apart from 6 for one model (session 13)
    ),
}


def _pairs(overrides: dict) -> tuple:
    """`--config.KEY=VALUE` overrides as (KEY, VALUE) pairs (ConfigDict field names may not hold dots)."""
    return tuple(overrides.items())


def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
    recipe = arg or "quick"
    if recipe not in RECIPES:
        raise ValueError(f"unknown toy-world recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    r = RECIPES[recipe]
    cfg = ml_collections.ConfigDict()
    cfg.recipe = recipe
    cfg.world = {
        "seed": 0, "height": 64, "width": 64, "fps": 25.0,
        "audio_clean_rate": 0.8, "pose_clean_rate": 0.8, "camera_motion_rate": 0.0, **r["world"],
    }  # fmt: skip
    # The VAE's own world: one clip per identity, none held out, another seed (identities differ).
    cfg.vae_world = {
        **cfg.world, "seed": cfg.world.seed + VAE_WORLD_SEED_OFFSET, "clips_per_identity": 1,
        "eval_identities": 0, **r["vae_world"],
    }  # fmt: skip
    # The validation world: as many identities as the held-out set, from a third seed, all held out. Recipe
    # choices are compared on it (`python -m launch.toyworld --validate=CHECKPOINT`), so that no figure is
    # tuned on the evaluation identities; neither the VAE nor the DiT trains on it.
    cfg.val_world = {
        **cfg.world, "seed": cfg.world.seed + VAL_WORLD_SEED_OFFSET,
        "num_identities": cfg.world.eval_identities, "eval_identities": cfg.world.eval_identities,
    }  # fmt: skip
    # data_pipeline.build flags: 9-frame clips (3 latent frames: 2 motion + 1 predicted) in one 64x64 bucket.
    # Overlapping windows (stride 4 frames = one latent frame) multiply the training clips cheaply.
    cfg.data = dict(clip_frames=9, clip_stride=4, pixel_budget=4096, mel_bins=16, mel_groups=2, workers=0)
    # launch.train_vae --config overrides (its defaults: a (8, 16, 32, 32) VAE, whole 5-frame clips).
    # loss.motion_l1: the motion-weighted L1 (omnihuman_jax/vae_losses.py), so the mouth and hands, under
    # 1% of the pixels, count in the loss; without it round-tripped hands barely moved.
    # spatial_compression_ratio 4: with the usual 8x, single frames round-tripped through the trained VAE
    # kept a quarter to half of the mouth's movement (docs/learning_proof_history.md, session 9).
    # loss.region_l1: the L1 over boxes around the mouth and hand landmarks; without it round-tripped hands
    # fell under the evaluator's colour threshold in over half the frames (session 12).
    # loss.temporal_l1 and video_lr_restart: the 4x VAE gave back about one mouth per latent frame (the mean
    # of its 4 video frames; `launch.probe_vae --mouth`), and its clip phase trained at the decayed tail of
    # the schedule. On the validation world's 12 clips the proof's VAE with both scored round-trip sync 0.672
    # (0.631 without), kept 28% of the mouth's movement within a latent frame (20%), at 29.23 dB (29.46)
    # with 95% of the hands found (93%) (session 17, docs/learning_proof_history.md).
    vae = dict(r["vae"])
    loss = {**VAE_LOSS, **vae.pop("loss", {})}
    cfg.vae = dict(latent_channels=16, spatial_compression_ratio=4, video_lr_restart=True, loss=loss, **vae)
    # launch.train overrides shared by all stages; the model is the toy preset (latent (3, 16, 16) x 16,
    # patch 2).
    cfg.preset = "toy"
    cfg.train = _pairs(
        {
            "batch_size": 4,
            "optimizer.warmup_steps": 20,
            "optimizer.ema_decay": 0.99,
            "checkpoint.every_steps": 100,
            "checkpoint.max_to_keep": 1,
            "metrics.every_steps": 10,
            "metrics.tensorboard": False,
            "metrics.peak_flops_per_device": 1e11,
            # Noise on the stacked motion latents: with model.motion_hold the DiT copies its motion
            # frames, and without it 12-segment samples drift (static-region PSNR 25.6 -> 24.4 dB).
            "flow.motion_noise": 0.5,
            "vae.spatial_compression_ratio": cfg.vae.spatial_compression_ratio,
            # The audio update only at the mouth's tokens (the mouth landmarks' region). Without it the DiT
            # learned no use of audio (docs/learning_proof_history.md, session 16). On the validation world,
            # stages 2 and 3 with it from runs/p15's stage 1 scored audio-driven sync 0.399 (0.141 without),
            # 27.54 dB (27.66), and pose-driven 2.08 px with 95% of the hands found (2.00 px, 96%).
            "model.audio_gate": True,
        }
    )
    cfg.stages = {
        f"stage{s}": _pairs(
            {
                "total_steps": r["steps"][s - 1],
                "optimizer.lr": STAGE_LR[s],
                **{f"condition_ratios.{k}": v for k, v in STAGE_RATIOS[s].items()},
            }
        )
        for s in (1, 2, 3)
    }
    # launch.sample flags for the held-out identity's video. cfg_pose: pose guidance in pose-driven
    # sampling (an extension; 1 is off). Chosen on the validation world with session 15's stage 3: scales 1 /
    # 2 / 3 / 5 / 8 placed the hands at 4.01 / 2.60 / 2.15 / 2.00 / 2.14 px, found 82 / 90 / 93 / 96 / 97% of
    # them and scored 27.71 / 27.53 / 27.31 / 26.80 / 25.94 dB; 5 is the best placement within 1 dB.
    # cfg_audio 8, held constant (session 19, docs/learning_proof_history.md): linear annealing to 1 (paper
    # section 3.4, against wrinkles the toy world does not have) left the last, detail-setting steps
    # unguided. runs/p17's stage 3 on the validation world, audio-driven: sync 0.367 at 27.33 dB with 3
    # annealed (the recipe before), and with 5 / 8 / 12 constant 0.494 / 0.534 / 0.547 at 27.25 / 27.18 /
    # 26.97 dB; pose-driven with the constant schedule 1.69 px (1.93 annealed), 97% of the hands found (98%),
    # 25.75 dB (26.44).
    cfg.sampling = dict(
        steps=r["sample_steps"], solver="euler", seed=0, cfg_audio=8.0, cfg_text=1.0, cfg_pose=5.0,
        cfg_schedule="constant", cfg_floor=1.0, mode="audio",
    )  # fmt: skip
    cfg.eval = dict(clips=r["eval_clips"])
    # benchmarks/learning_proof.py: extra runs of stages 2 + 3 (`no_audio`: audio ratio 0 in both, so
    # the model never sees audio) or of stage 3 alone from the main stage 2 (the Principle-2 pose sweep).
    # The Principle-2 sweep's stage-3 runs: a quarter of the main stage 3, so the proof fits its 60 minutes.
    sweep = max(2, r["steps"][2] // 4)
    cfg.ablations = {
        "no_audio": dict(stages=(2, 3), overrides=(("condition_ratios.audio", 0.0),)),
        "pose_02": dict(stages=(3,), overrides=(("condition_ratios.pose", 0.2), ("total_steps", sweep))),
        "pose_05": dict(stages=(3,), overrides=(("condition_ratios.pose", 0.5), ("total_steps", sweep))),
        "pose_08": dict(stages=(3,), overrides=(("condition_ratios.pose", 0.8), ("total_steps", sweep))),
    }
    return cfg
