"""Import a diffusers HunyuanVideo text-to-video model as the starting point of stage-1 training.

  python -m launch.import_torch --config=configs/stage1.py:hunyuanvideo
      --transformer=HunyuanVideo/transformer --vae=HunyuanVideo/vae --out=runs/hv_init
  python -m launch.train --config=configs/stage1.py:hunyuanvideo --workdir=runs/s1
      --config.checkpoint.init_from=runs/hv_init --config.vae.path=runs/hv_init/vae
(each command on one line).

Every tensor of the diffusers `HunyuanVideoTransformer3DModel` maps to one param (shapes are checked and a
mismatch names the tensor); tensors left unmapped are listed. The OmniHuman additions (audio
cross-attention, pose guider, condition channels) keep their zero-output init, so the imported model equals
the original on text-to-video at step 0. Params are placed straight into their mesh sharding
(--config.mesh.*). The output is an orbax checkpoint folder (OUT/checkpoints/0) plus the VAE in OUT/vae.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    None,
    "Run config whose model must match the transformer, e.g. configs/stage1.py:hunyuanvideo; "
    "override fields with --config.model.KEY=VALUE.",
    lock_config=True,
)
flags.DEFINE_string(
    "transformer",
    None,
    "diffusers HunyuanVideoTransformer3DModel folder: config.json plus "
    "diffusion_pytorch_model.safetensors or a sharded *.safetensors.index.json.",
)
flags.DEFINE_string(
    "vae",
    "",
    "diffusers AutoencoderKLHunyuanVideo folder, checked and copied to OUT/vae. Empty: no VAE is copied.",
)
flags.DEFINE_string(
    "out", None, "Output folder: OUT/checkpoints/0 (for --config.checkpoint.init_from) and OUT/vae."
)
flags.DEFINE_bool("strict", False, "Fail when a diffusers tensor maps to no param (default: list them).")
flags.DEFINE_bool("overwrite", False, "Allow an --out that already holds a checkpoint (it is replaced).")
flags.mark_flags_as_required(["config", "transformer", "out"])


def main(argv: list[str]) -> int:
    del argv
    if FLAGS["verbosity"].using_default_value:
        logging.set_verbosity(logging.WARNING)
    import os
    import shutil

    from launch.distributed import maybe_initialize_distributed

    maybe_initialize_distributed()
    from omnihuman_jax import sharding as shd
    from omnihuman_jax.checkpointing import checkpoint_dir
    from omnihuman_jax.interop.import_hunyuan import copy_vae, import_transformer, save_imported

    config = FLAGS.config
    ckpt = checkpoint_dir(FLAGS.out)
    if os.path.isdir(ckpt) and os.listdir(ckpt):
        if not FLAGS.overwrite:
            print(
                f"error: {ckpt} already holds a checkpoint; pass --overwrite or choose another --out",
                file=sys.stderr,
                flush=True,
            )
            return 2
        shutil.rmtree(ckpt)
    try:
        mesh = shd.make_mesh(dict(config.mesh))
        params, report = import_transformer(FLAGS.transformer, config, mesh, strict=FLAGS.strict)
        vae_dir = copy_vae(FLAGS.vae, FLAGS.out) if FLAGS.vae else None
        meta = {"imported_from": {"transformer": os.path.abspath(FLAGS.transformer), "vae": FLAGS.vae}}
        saved = save_imported(FLAGS.out, params, config, meta)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"imported {report.loaded} tensors from {FLAGS.transformer} -> {saved}/0", flush=True)
    print(
        f"{len(report.initialised)} OmniHuman params keep their init, e.g. {report.initialised[:4]}",
        flush=True,
    )
    if report.unmapped:
        print(f"warning: {len(report.unmapped)} tensors map to no param: {report.unmapped[:10]}", flush=True)
    if vae_dir is not None:
        print(f"VAE copied to {vae_dir}", flush=True)
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
