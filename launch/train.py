"""Train the OmniHuman DiT from a config file.

  python -m launch.train --config=configs/stage1.py:tiny --workdir=/tmp/run --config.total_steps=6

Any config value can be overridden with --config.KEY=VALUE (for example --config.optimizer.lr=1e-4); an
unknown key fails at start with its name. Running again with the same --workdir resumes from the newest
checkpoint, data-iterator state included. With --config.data.dir set, batches come from that TFDS dataset
(data_pipeline.build); otherwise from the synthetic source.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from omnihuman_jax import xla_env

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this CLI's flags; only when run as a program, so importing it never clashes with other CLIs."""
    config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. configs/stage1.py:tiny.", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics.jsonl and TensorBoard logs.")
    flags.mark_flags_as_required(["config", "workdir"])


def make_source(config, process_index: int, process_count: int):
    if config.data.dir:
        from data_pipeline.grain_pipeline import make_train_iterator

        return make_train_iterator(config, process_index, process_count)
    from data_pipeline.synthetic import SyntheticSource

    return SyntheticSource(config, process_index, process_count)


def main(argv: list[str]) -> int:
    del argv
    if not FLAGS.is_parsed() or FLAGS["verbosity"].using_default_value:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from launch.distributed import maybe_initialize_distributed

    maybe_initialize_distributed()
    from omnihuman_jax.checkpointing import CheckpointError
    from omnihuman_jax.config_checks import ConfigError
    from omnihuman_jax.trainer import NonFiniteError, train

    try:
        result = train(FLAGS.config, FLAGS.workdir, make_source)
    except (ConfigError, NonFiniteError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"finished at step {result.step}" + (" (preempted)" if result.preempted else ""), flush=True)
    return 0


if __name__ == "__main__":
    xla_env.apply()
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
