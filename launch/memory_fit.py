"""The longest video a device fits, per remat policy, found by compiling the train step (no step runs).

  python -m launch.compile --config=configs/stage3.py:1b --topology=local --fit \
      --remats=none,save_qkv_proj,save_dots,offload,full --config.model.dtype=bfloat16

For each remat policy, `launch.compile --fit` searches `shape.latent_frames` for the largest value whose
per-device memory (`compiled.memory_analysis()`: arguments + outputs + temps - aliased, the figure
`launch.compile` prints) stays within the budget: the device's own limit where it reports one
(`Device.memory_stats()["bytes_limit"]`, the pool XLA allocates from on a GPU), else `--memory_gb`.
Compiling takes seconds to a minute and allocates nothing, so a policy costs a few compiles instead of a
run per size until one runs out of memory (MaxText's train_compile answers the same question for one
size).

The search (`largest_fitting`) keeps a bracket: the largest size known to fit and the smallest known not
to. Memory grows about linearly with frames once attention is flash-style, so each probe is the size the
line through the measured sizes predicts (going up at most 4x while nothing over the budget is known),
clamped inside the bracket; with one measurement it doubles (or halves). When two probes in a row land on
the same side of the answer it bisects, so a curved or stepped profile costs a few more compiles rather
than one per size. A typical policy takes 3 to 6. A compile that itself runs out of device memory (GPU
autotuning allocates) counts as "does not fit".
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

Bytes = int | None  # None: the size does not fit at all (compiling ran out of memory)


@dataclasses.dataclass
class Fit:
    """One search: `largest` fits (0: not even 1 does); `largest + 1` does not, or is past the limit."""

    largest: int
    probes: dict[int, Bytes]  # every size compiled, with its per-device total bytes


def _fits(b: Bytes, budget: int) -> bool:
    return b is not None and b <= budget


def _next_probe(probes: dict[int, Bytes], budget: int, lo: int, hi: int, limit: int) -> int:
    """The next size to compile, inside the bracket (lo fits, hi does not; hi = limit + 1: unknown)."""
    known = sorted((n, b) for n, b in probes.items() if b is not None)
    below = [p for p in known if p[0] <= lo]
    above = [p for p in known if p[0] >= hi]
    if below and above:
        pair = (below[-1], above[0])  # interpolate across the bracket
    elif len(below) >= 2:
        pair = (below[-2], below[-1])  # extrapolate upward from the two largest that fit (at most 4x)
    elif len(above) >= 2:
        pair = (above[0], above[1])  # extrapolate downward from the two smallest that do not
    else:
        pair = None
    guess = None
    if pair is not None:
        (n1, b1), (n2, b2) = pair
        slope = (b2 - b1) / (n2 - n1)
        if slope > 0:
            guess = int(n1 + (budget - b1) / slope)
            if hi > limit:  # nothing over the budget seen yet: a line through small sizes can overshoot far
                guess = min(guess, 4 * lo)
    if guess is None:  # no line to follow
        if hi > limit:
            guess = 2 * lo  # nothing over the budget seen yet: double
        elif lo == 0:
            guess = hi // 2  # nothing fits yet: halve
        else:
            guess = (lo + hi) // 2
    return min(max(guess, lo + 1), hi - 1)


def largest_fitting(total_bytes: Callable[[int], Bytes], budget: int, start: int, limit: int) -> Fit:
    """Largest n in [1, limit] with total_bytes(n) <= budget, for total_bytes non-decreasing in n."""
    if limit < 1:
        raise ValueError(f"limit={limit}: the search needs at least size 1")
    probes: dict[int, Bytes] = {}
    lo, hi = 0, limit + 1  # lo fits (0 trivially), hi does not (limit + 1: past the search)
    n = min(max(start, 1), limit)
    moved: list[str] = []  # which end of the bracket each probe moved
    while True:
        probes[n] = total_bytes(n)
        if _fits(probes[n], budget):
            lo = n
            moved.append("lo")
        else:
            hi = n
            moved.append("hi")
        if hi - lo <= 1:
            return Fit(lo, probes)
        n = _next_probe(probes, budget, lo, hi, limit)
        if len(moved) >= 2 and moved[-1] == moved[-2] and 0 < lo and hi <= limit:
            n = (lo + hi) // 2  # the line keeps missing on one side (a curved or stepped profile): bisect


def device_memory_budget(devices: list) -> int | None:
    """Bytes one device may allocate where it says (GPU, TPU); None on CPUs and topology descriptions."""
    stats_fn = getattr(devices[0], "memory_stats", None)
    try:
        stats = stats_fn() if stats_fn is not None else None
    except Exception:  # noqa: BLE001 - topology descriptions and some backends do not implement it
        stats = None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if limit else None


def _out_of_memory(e: Exception) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def frames_total_bytes(
    config: Any,
    devices: list,
    remat: str,
    compile_fn: Callable[[Any, list], dict[str, Any]],
    log: Callable[[str], None] | None = None,
) -> Callable[[int], Bytes]:
    """n -> per-device total bytes of the train step compiled with `shape.latent_frames = n`."""

    def total(n: int) -> Bytes:
        cfg = config.copy_and_resolve_references()
        cfg.model.remat = remat
        cfg.shape.latent_frames = n
        t0 = time.perf_counter()
        try:
            fig = compile_fn(cfg, devices)
        except Exception as e:
            if not _out_of_memory(e):
                raise
            fig = {"total_bytes": None}
        if "total_bytes" not in fig:
            raise RuntimeError(
                f"the {devices[0].platform} compiler gave no memory analysis, so --fit cannot measure"
            )
        if log is not None:
            log(
                f"  remat {remat}, latent_frames {n}: {format_bytes(fig['total_bytes'])} per device "
                f"(compiled in {time.perf_counter() - t0:.0f} s)"
            )
        return fig["total_bytes"]

    return total


def sequence_tokens(config: Any, latent_frames: int) -> dict[str, int]:
    """Video, reference and text tokens of one sample at `latent_frames` (the joint sequence's parts)."""
    s, p = config.shape, config.model.patch_size
    hw = (s.latent_height // p) * (s.latent_width // p)
    return dict(video=latent_frames * hw, reference=hw, text=int(s.text_len))


def fit_policies(
    config: Any,
    devices: list,
    remats: list[str],
    budget: int,
    limit: int,
    compile_fn: Callable[[Any, list], dict[str, Any]],
    log: Callable[[str], None] | None = None,
    on_row: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per remat policy: the largest latent_frames that fits `budget`, with its tokens and bytes.

    `on_row(rows)` runs after each policy, so a caller can save what is measured before a time limit hits.
    """
    rows = []
    start = int(config.shape.latent_frames)
    for remat in remats:
        total = frames_total_bytes(config, devices, remat, compile_fn, log)
        fit = largest_fitting(total, budget, start, limit)
        n = fit.largest
        rows.append(
            dict(
                remat=remat,
                latent_frames=n,
                video_frames=1 + 4 * (n - 1) if n else 0,
                tokens=sequence_tokens(config, n),
                total_bytes=fit.probes.get(n),
                next_bytes=fit.probes.get(n + 1),
                compiles=len(fit.probes),
                probes={str(k): v for k, v in sorted(fit.probes.items())},
            )
        )
        if on_row is not None:
            on_row(rows)
        start = max(n, 1)  # the next policy usually fits near the last one
    return rows


def format_bytes(n: Bytes) -> str:
    if n is None:
        return "out of memory"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def fit_report(rows: list[dict[str, Any]], budget: int, limit: int) -> str:
    lines = [
        f"largest latent_frames per remat policy within {format_bytes(budget)} per device "
        f"(search limit {limit}):"
    ]
    for r in rows:
        t = r["tokens"]
        if r["latent_frames"] == 0:
            lines.append(
                f"  {r['remat']}: not even 1 latent frame fits (1 frame: {format_bytes(r['probes']['1'])})"
            )
            continue
        over = (
            f"{r['latent_frames'] + 1} needs {format_bytes(r['next_bytes'])}"
            if r["latent_frames"] < limit
            else "the search limit was reached"
        )
        lines.append(
            f"  {r['remat']}: {r['latent_frames']} latent frames ({r['video_frames']} video frames), "
            f"{t['video']} video + {t['reference']} reference + {t['text']} text tokens, "
            f"{format_bytes(r['total_bytes'])}; {over} ({r['compiles']} compiles)"
        )
    return "\n".join(lines)
