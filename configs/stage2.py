"""Stage 2 (adds audio) of the omni-conditions training (OmniHuman-1, section 3.3).

Usage: --config=configs/stage2.py:PRESET with PRESET one of tiny, toy, small, 1b, 7b, hunyuanvideo.
"""

from configs.base import get_base_config


def get_config(arg: str = "tiny"):
    return get_base_config(stage=2, preset=arg or "tiny")
