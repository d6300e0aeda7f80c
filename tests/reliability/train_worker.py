"""`python -m launch.train` with a faulty data source, for the reliability tests.

  python tests/reliability/train_worker.py --config=configs/stage1.py:tiny --workdir=W \
      --nan_steps=3,6,7 --spike_steps=5

The data source is the CLI's own (`launch.train.make_source`), wrapped: the batch that produces step s
(1-based) gets NaN latents when s is in --nan_steps, and latents scaled by --spike_scale when s is in
--spike_steps. Everything else, error handling and exit codes included, is `launch.train.main`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from absl import app, flags  # noqa: E402

import launch.train as cli  # noqa: E402

flags.DEFINE_list("nan_steps", [], "Steps (1-based) whose batch gets NaN latents.")
flags.DEFINE_list("spike_steps", [], "Steps (1-based) whose batch latents are scaled by --spike_scale.")
flags.DEFINE_float("spike_scale", 30.0, "Latent scale of a --spike_steps batch (a loss spike).")


class FaultySource:
    """Wraps a data source; counts batches from its saved state so a resumed run stays aligned."""

    def __init__(self, inner, nan_steps: set[int], spike_steps: set[int], spike_scale: float):
        self.inner, self.nan_steps, self.spike_steps, self.spike_scale = (
            inner,
            nan_steps,
            spike_steps,
            spike_scale,
        )

    def __iter__(self):
        return self

    def __next__(self):
        step = int(self.inner.get_state()["step"]) + 1  # the step this batch produces
        batch = dict(next(self.inner))
        if step in self.nan_steps:
            batch["latents"] = batch["latents"] * float("nan")
        elif step in self.spike_steps:
            batch["latents"] = batch["latents"] * self.spike_scale
        return batch

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)

    def close(self):
        self.inner.close()


def main(argv: list[str]) -> int:
    make_inner = cli.make_source
    nan = {int(s) for s in flags.FLAGS.nan_steps}
    spike = {int(s) for s in flags.FLAGS.spike_steps}
    cli.make_source = lambda config, pidx, pcount: FaultySource(
        make_inner(config, pidx, pcount), nan, spike, flags.FLAGS.spike_scale
    )
    return cli.main(argv)


if __name__ == "__main__":
    cli.define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
