"""Aspect-ratio buckets: train at (roughly) one pixel budget in the video's native shape.

OmniHuman-1 (section 3.1) encodes videos "at their native size" with the causal 3D VAE, following
the native-resolution training of NaViT / Patch n' Pack. We approximate that, as the public
HunyuanVideo / SDXL trainers do, with a small table of aspect-ratio buckets of about equal area:
every clip is resized and centre-cropped to the bucket nearest its own aspect ratio.

Sides are multiples of 16, so a bucket survives the VAE's 8x spatial compression followed by the
transformer's 2x2 patching without padding. The table covers portrait, square and landscape shapes
from 9:16 (height/width = 16/9) to 16:9. At small pixel budgets several ratios round to the same
size; the table keeps each size once, so its length depends on the budget.
"""

from __future__ import annotations

import math

# Width / height ratios, portrait first: 9:16, 2:3, 3:4, 4:5, 1:1, 5:4, 4:3, 3:2, 16:9.
ASPECT_RATIOS: tuple[float, ...] = (9 / 16, 2 / 3, 3 / 4, 4 / 5, 1.0, 5 / 4, 4 / 3, 3 / 2, 16 / 9)
SIDE_MULTIPLE = 16  # VAE 8x spatial compression x patch size 2


def _round_side(x: float, multiple: int) -> int:
    return max(multiple, int(round(x / multiple)) * multiple)


def bucket_table(
    pixel_budget: int,
    *,
    aspect_ratios: tuple[float, ...] = ASPECT_RATIOS,
    multiple: int = SIDE_MULTIPLE,
) -> tuple[tuple[int, int], ...]:
    """Buckets `(height, width)` of about `pixel_budget` pixels, sorted from tallest to widest.

    `pixel_budget` is an area, e.g. `512 * 512`. Each width/height ratio `r` gives
    `h = sqrt(budget / r)`, `w = h * r`, both rounded to the nearest multiple of `multiple`
    (at least `multiple`). Duplicate sizes are kept once.
    """
    if pixel_budget < multiple * multiple:
        raise ValueError(
            f"pixel_budget={pixel_budget} is below one {multiple}x{multiple} block; "
            f"use at least {multiple * multiple} (e.g. 256*256)"
        )
    if not aspect_ratios or any(r <= 0 for r in aspect_ratios):
        raise ValueError(f"aspect_ratios must be positive width/height ratios, got {aspect_ratios}")
    table: list[tuple[int, int]] = []
    for ratio in sorted(aspect_ratios):
        h = math.sqrt(pixel_budget / ratio)
        size = (_round_side(h, multiple), _round_side(h * ratio, multiple))
        if size not in table:
            table.append(size)
    table.sort(key=lambda hw: hw[1] / hw[0])
    return tuple(table)


def nearest_bucket(height: int, width: int, table: tuple[tuple[int, int], ...]) -> int:
    """Index of the bucket whose aspect ratio is nearest to `height x width`, in log-ratio distance.

    Log distance treats 2:1 and 1:2 symmetrically. Ties go to the earlier (taller) bucket.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if not table:
        raise ValueError("bucket table is empty; build one with bucket_table(pixel_budget)")
    target = math.log(width / height)
    distances = [abs(math.log(w / h) - target) for h, w in table]
    return min(range(len(table)), key=lambda i: (distances[i], i))
