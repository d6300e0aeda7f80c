"""Compile time of the train step with scanned blocks: a deep stack should compile about as fast as a
shallow one, since `nn.scan` compiles one block body per stack (MaxText's scan_layers argument).

  python -m benchmarks.compile_time --preset=small --layers=4,16

For each total depth L the model has L/2 dual-stream and L/2 single-stream blocks; the step is lowered and
compiled (XLA:CPU, local device) from abstract shapes by launch/compile.py, and the growth from the first
to the last depth is printed.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="model preset from configs/presets.py (default small)")
    p.add_argument("--layers", default="4,16", help="comma-separated total block counts (default 4,16)")
    p.add_argument("--remat", default="full", help="model.remat policy (default full)")
    p.add_argument("--no_scan", action="store_true", help="unrolled blocks, for comparison")
    p.add_argument("--repeats", type=int, default=1, help="compiles per depth; the fastest is kept")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from configs.base import get_base_config
    from launch.compile import compile_train_step

    depths = [int(x) for x in args.layers.split(",")]
    times = {}
    for depth in depths:
        if depth % 2:
            print(f"error: --layers entries must be even (half dual, half single), got {depth}")
            return 2
        config = get_base_config(1, args.preset)
        config.batch_size = 1
        config.model.update(
            dict(
                num_dual_blocks=depth // 2,
                num_single_blocks=depth // 2,
                scan_layers=not args.no_scan,
                remat=args.remat,
            )
        )
        best = min(
            compile_train_step(config, jax.devices("cpu")[:1])["compile_s"] for _ in range(args.repeats)
        )
        times[depth] = best
        print(f"{depth} blocks (scan={not args.no_scan}, remat={args.remat}): lower+compile {best:.1f} s")
    first, last = times[depths[0]], times[depths[-1]]
    print(f"compile-time growth {depths[0]} -> {depths[-1]} blocks: {100 * (last / first - 1):+.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
