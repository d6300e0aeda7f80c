"""Export a training checkpoint to PyTorch: safetensors weights + config.json, and optionally the VAE.

  python -m launch.export_torch --checkpoint=runs/s3 --out=export/s3 --weights=ema --dtype=bf16

The output folder loads in plain PyTorch with
`omnihuman_jax.interop.torch_dit.OmniHumanDiTTorch.from_pretrained(out)`. Tensors stream from the orbax
checkpoint (whatever mesh saved it) a bounded group at a time (--read_bytes) into `model.safetensors`,
or into several `model-0000i-of-0000n.safetensors` files with a `model.safetensors.index.json` when the
weights exceed --max_shard_size. Names follow diffusers' HunyuanVideoTransformer3DModel, plus the
OmniHuman additions.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "checkpoint",
    None,
    "A launch.train workdir (its newest step is used) or one step folder (WORKDIR/checkpoints/STEP).",
)
flags.DEFINE_string("out", None, "Output folder for config.json and the safetensors weights.")
flags.DEFINE_enum(
    "weights",
    "ema",
    ["ema", "params"],
    "Which weights to export: the EMA of the params (ema) or the raw training params (params).",
)
flags.DEFINE_enum("dtype", "fp32", ["fp32", "bf16", "fp16"], "Storage dtype of the exported tensors.")
flags.DEFINE_string(
    "max_shard_size",
    "5GB",
    "Largest safetensors file before the weights are split into "
    "shards with an index, e.g. 5GB, 500MB or a byte count.",
)
flags.DEFINE_string(
    "read_bytes",
    "256MB",
    "Largest group of parameters read from the checkpoint per orbax call (host memory holds one group, or "
    "one tensor when larger); 0 reads strictly one tensor at a time (slower: orbax re-reads its metadata).",
)
flags.DEFINE_string(
    "vae",
    "",
    "Optional diffusers AutoencoderKLHunyuanVideo folder (e.g. the run's "
    "--config.vae.path); it is checked, converted through load_vae/save_vae and written to "
    "OUT/vae. Empty: no VAE is exported.",
)
flags.DEFINE_bool(
    "overwrite", False, "Replace weights and config already in --out (otherwise it is an error)."
)
flags.mark_flags_as_required(["checkpoint", "out"])


def main(argv: list[str]) -> int:
    del argv
    if FLAGS["verbosity"].using_default_value:
        logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    from omnihuman_jax.checkpointing import CheckpointError, load_run_config
    from omnihuman_jax.interop.export_torch import export_checkpoint, parse_size

    try:
        model_config = load_run_config(FLAGS.checkpoint)["model"]
        report = export_checkpoint(
            FLAGS.checkpoint,
            FLAGS.out,
            model_config,
            which=FLAGS.weights,
            dtype=FLAGS.dtype,
            max_shard_bytes=parse_size(FLAGS.max_shard_size),
            read_bytes=parse_size(FLAGS.read_bytes),
            overwrite=FLAGS.overwrite,
        )
        if FLAGS.vae:
            from omnihuman_jax.interop.diffusers_vae import load_vae, save_vae

            vae_cfg, vae_params = load_vae(FLAGS.vae, strict=True)
            save_vae(f"{FLAGS.out}/vae", vae_cfg, vae_params, overwrite=FLAGS.overwrite)
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(
        f"exported step {report.step} ({FLAGS.weights}): {report.num_tensors} tensors, "
        f"{report.total_bytes / 1e6:.1f} MB {FLAGS.dtype} in {len(report.files)} file(s) -> {FLAGS.out}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
