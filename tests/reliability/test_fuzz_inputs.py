"""Hostile inputs: random and mutated bytes into every reader of outside files, and random config overrides.

Each input kind runs in a spawned child process under a time limit, so a hang or an interpreter crash
(a segfault in a codec) fails the test instead of killing or stalling pytest; inside the child,
`faulthandler` ends any single example that runs over PER_EXAMPLE_S with its traceback. Every example
must either succeed or raise the reader's documented exception: `MediaError` (data_pipeline.media),
`ManifestError` entries from `iter_manifest` (never an exception), `ConfigError` / absl flag errors /
`ValueError` for configs, `SampleError` / `ValueError` for launch.sample's image check.
Examples per kind: FUZZ_EXAMPLES (default 25 in CI; the full run uses FUZZ_EXAMPLES=500).
"""

from __future__ import annotations

import faulthandler
import io
import json
import multiprocessing
import os
import pathlib
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
PER_EXAMPLE_S = 20.0
KIND_TIMEOUT_S = 120.0 + FUZZ_EXAMPLES * 2.0


# ---------------------------------------------------------------- valid seeds, built in the child


def _video_bytes(suffix: str, frames: int = 6, size: tuple[int, int] = (24, 32)) -> bytes:
    import av

    buf = io.BytesIO()
    fmt = {".mp4": "mp4", ".mov": "mov"}[suffix]
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(frames):
            img = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _audio_bytes(suffix: str, seconds: float = 0.2, rate: int = 22050) -> bytes:
    wave = (0.3 * np.sin(np.linspace(0, 400 * seconds, int(rate * seconds)))).astype(np.float32)
    if suffix in (".wav", ".flac"):
        import soundfile

        buf = io.BytesIO()
        soundfile.write(buf, wave, rate, format=suffix[1:].upper())
        return buf.getvalue()
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=rate, layout="mono")
        frame_len = 1152
        for i in range(0, len(wave) - frame_len, frame_len):
            frame = av.AudioFrame.from_ndarray(wave[None, i : i + frame_len], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _image_bytes(fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    rgb = np.random.default_rng(0).integers(0, 255, (20, 28, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def _npy_bytes() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).random((3, 133, 3), dtype=np.float32))
    return buf.getvalue()


def _json_keypoints_bytes() -> bytes:
    return json.dumps({"keypoints": np.random.default_rng(0).random((2, 133, 3)).round(3).tolist()}).encode()


# ---------------------------------------------------------------- strategies


def _mutate(seed: bytes, keep: float, flips: list[tuple[int, int]], tail: bytes) -> bytes:
    """Truncate to a fraction, overwrite some bytes, append junk."""
    data = bytearray(seed[: int(len(seed) * keep)])
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    return bytes(data) + tail


def _bytes_strategy(seeds: list[bytes]):
    from hypothesis import strategies as st

    mutated = st.builds(
        _mutate,
        st.sampled_from(seeds),
        st.floats(0.0, 1.0),
        st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=12),
        st.binary(max_size=64),
    )
    return st.one_of(st.sampled_from(seeds), st.binary(max_size=2048), mutated, mutated)


def _json_value():
    from hypothesis import strategies as st

    paths = st.sampled_from(
        ["clip.mp4", "../outside.mp4", "/etc/passwd", "a/../../x.wav", "sub/../clip.mp4", "", " ", "\0x", "~"]
    )
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40), paths, st.just("x" * 5000)
    )
    return st.recursive(
        leaves,
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=20,
    )


def _manifest_line():
    from hypothesis import strategies as st

    keys = ["clip_id", "video", "audio", "keypoints", "caption", "scores", "identity", "split", "extra"]
    obj = st.dictionaries(st.sampled_from(keys), _json_value(), max_size=9).map(json.dumps).map(str.encode)
    valid = st.builds(
        lambda cid, video, extra: json.dumps({"clip_id": cid, "video": video, **extra}).encode(),
        st.text(min_size=1, max_size=12),
        st.sampled_from(["clip.mp4", "../outside.mp4", "sub/../clip.mp4", "link.mp4", "/etc/hostname"]),
        st.dictionaries(
            st.sampled_from(["audio", "keypoints", "scores", "split"]), _json_value(), max_size=3
        ),
    )
    deep = st.integers(1, 100000).map(lambda n: b"[" * n + b"]" * n)
    return st.one_of(obj, valid, st.binary(max_size=200), deep)


# ---------------------------------------------------------------- the input kinds


def _write(tmp: pathlib.Path, name: str, data: bytes) -> pathlib.Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _kind(kind: str, tmp: pathlib.Path) -> tuple[Callable, object, tuple[type, ...]]:
    """(target(example), hypothesis strategy, allowed exception types) of one input kind."""
    from hypothesis import strategies as st

    if kind == "video":
        from data_pipeline.media import MediaError, decode_video

        seeds = [_video_bytes(".mp4"), _video_bytes(".mov")]
        strategy = st.tuples(_bytes_strategy(seeds), st.sampled_from([".mp4", ".mov", ".webm"]))
        target = lambda ex: decode_video(
            _write(tmp, "v" + ex[1], ex[0]),
            fps=25,
            buckets=((32, 32), (32, 48)),
            max_source_frames=2000,
            max_duration_s=120,
            decode_timeout_s=10,
        )
        return target, strategy, (MediaError,)
    if kind.startswith("audio_"):
        from data_pipeline.media import MediaError, decode_audio

        suffix = "." + kind.split("_")[1]
        strategy = _bytes_strategy([_audio_bytes(suffix)])
        target = lambda data: decode_audio(
            _write(tmp, "a" + suffix, data), max_duration_s=120, decode_timeout_s=10
        )
        return target, strategy, (MediaError,)
    if kind == "image":
        from launch.sample_inputs import SampleError, load_image

        strategy = st.tuples(_bytes_strategy([_image_bytes("PNG"), _image_bytes("JPEG")]), st.integers(1, 4))
        target = lambda ex: load_image(_write(tmp, "ref.png", ex[0]), ex[1] * 64 * 64)
        return target, strategy, (SampleError, ValueError)
    if kind in ("keypoints_npy", "keypoints_json"):
        from data_pipeline.media import MediaError, load_keypoints

        suffix = "." + kind.split("_")[1]
        seed = _npy_bytes() if suffix == ".npy" else _json_keypoints_bytes()
        strategy = st.one_of(_bytes_strategy([seed]), _json_value().map(lambda v: json.dumps(v).encode()))
        target = lambda data: load_keypoints(_write(tmp, "kp" + suffix, data))
        return target, strategy, (MediaError,)
    if kind == "manifest":
        from data_pipeline.manifest import ManifestEntry, ManifestError, iter_manifest

        root = tmp / "root"
        (root / "sub").mkdir(parents=True, exist_ok=True)
        (root / "clip.mp4").write_bytes(b"x")
        (tmp / "outside.mp4").write_bytes(b"x")
        if not (root / "link.mp4").exists():
            (root / "link.mp4").symlink_to(tmp / "outside.mp4")

        def target(lines: list[bytes]) -> None:
            path = _write(root, "manifest.jsonl", b"\n".join(lines))
            for item in iter_manifest(path):
                assert isinstance(item, ManifestEntry | ManifestError), item
                if isinstance(item, ManifestEntry):  # never a path outside the root
                    for p in (item.video, item.audio, item.keypoints):
                        assert p is None or p.resolve().is_relative_to(root.resolve()), p

        return target, st.lists(_manifest_line(), max_size=6), ()
    if kind == "config":
        return _config_kind()
    raise ValueError(kind)


def _config_kind():
    from absl import flags
    from hypothesis import strategies as st
    from ml_collections import config_flags

    from configs.base import get_base_config
    from omnihuman_jax.config_checks import ConfigError, validate_config

    keys = sorted(_flat_keys(get_base_config(3, "tiny").to_dict()))
    values = st.one_of(
        st.integers(-3, 10**12).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["True", "False", "None", "''", "()", "(1,2)", "[", "nan", "-1", "0", "1e400"]),
        st.text(max_size=12),
    )
    override = st.tuples(st.sampled_from(keys), values).map(lambda kv: f"--config.{kv[0]}={kv[1]}")
    spec = st.tuples(
        st.sampled_from(["1", "2", "3"] * 3 + ["9"]), st.sampled_from(["tiny"] * 6 + ["small", "bogus", ""])
    )

    def target(ex) -> None:
        (stage, preset), overrides = ex
        path = f"configs/stage{stage}.py" if stage != "9" else "configs/missing.py"
        argv = ["prog", f"--config={path}:{preset}", *overrides]
        fv = flags.FlagValues()  # the CLI's parsing (launch.train), on a fresh flag set
        config_flags.DEFINE_config_file("config", None, "c", flag_values=fv, lock_config=True, sys_argv=argv)
        fv(argv)
        validate_config(fv.config)

    return (
        target,
        st.tuples(spec, st.lists(override, max_size=4)),
        (flags.Error, ConfigError, ValueError, OSError),
    )


def _flat_keys(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


KINDS = [
    "video",
    "audio_wav",
    "audio_flac",
    "audio_mp3",
    "image",
    "keypoints_npy",
    "keypoints_json",
    "manifest",
    "config",
]


# ---------------------------------------------------------------- the child process


def _fuzz(kind: str, examples: int, conn) -> None:
    """Child entry: runs hypothesis over one kind; sends outcome counts, or the failure's traceback."""
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    try:
        from hypothesis import HealthCheck, given, settings

        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"fuzz_{kind}_"))
        target, strategy, allowed = _kind(kind, tmp)
        counts: Counter[str] = Counter()

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def check(example):
            faulthandler.dump_traceback_later(PER_EXAMPLE_S, exit=True)
            try:
                target(example)
                counts["ok"] += 1
            except allowed as e:
                counts[type(e).__name__] += 1
            finally:
                faulthandler.cancel_dump_traceback_later()

        check()
        conn.send(("ok", dict(counts)))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent as text
        text = traceback.format_exc()
        conn.send(("fail", text if len(text) < 5000 else text[:4000] + "\n...\n" + text[-800:]))


@pytest.mark.parametrize("kind", KINDS)
def test_fuzzed_input_gives_documented_error_never_crash_or_hang(kind):
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_fuzz, args=(kind, FUZZ_EXAMPLES, child), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(KIND_TIMEOUT_S):
            pytest.fail(
                f"{kind}: no result after {KIND_TIMEOUT_S:.0f} s (a hang?); exit code {proc.exitcode}"
            )
        status, payload = parent.recv()
    except EOFError:
        proc.join(5)
        pytest.fail(
            f"{kind}: the fuzz process died (exit code {proc.exitcode}): a crash or a per-example hang"
        )
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
    assert status == "ok", f"{kind}: an input gave an undocumented error:\n{payload}"
    assert sum(payload.values()) >= FUZZ_EXAMPLES, payload
    print(f"{kind}: {payload}")


def test_fuzz_seeds_are_valid_inputs(tmp_path):
    """The mutation seeds decode cleanly, so the fuzz starts from real files, not from noise only."""
    from data_pipeline.media import decode_audio, decode_video, load_keypoints

    video = decode_video(_write(tmp_path, "v.mp4", _video_bytes(".mp4")), fps=25, buckets=((32, 32),))
    assert video.frames.shape[0] >= 5
    for suffix in (".wav", ".flac", ".mp3"):
        assert decode_audio(_write(tmp_path, "a" + suffix, _audio_bytes(suffix))).size > 1000
    assert load_keypoints(_write(tmp_path, "k.npy", _npy_bytes())).shape == (3, 133, 3)
    assert load_keypoints(_write(tmp_path, "k.json", _json_keypoints_bytes())).shape == (2, 133, 3)


@pytest.mark.parametrize("key", ["model.patch_size", "model.num_heads"])
def test_zero_divisor_config_value_gives_config_error_not_zero_division(key):
    from configs.base import get_base_config
    from omnihuman_jax.config_checks import ConfigError, validate_config

    config = get_base_config(1, "tiny")
    section, name = key.split(".")
    config[section][name] = 0
    with pytest.raises((ConfigError, ValueError), match=name):
        validate_config(config)
