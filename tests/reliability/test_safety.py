"""Safety rules: no pickle, safe torch / transformers loading, inputs confined to their declared root.

The repo scan parses every Python file of the project (not the virtualenv) and names file:line for:
an import of pickle or a pickle-based serialiser (cPickle, dill, cloudpickle, shelve, joblib);
`torch.load(...)` without `weights_only=True`; `trust_remote_code=True`; `np.load(..., allow_pickle=True)`.
Files that do not parse are grepped for the same patterns. The manifest tests check that a path cannot
leave the manifest's folder (`..`, absolute paths, symlinks) unless allowed, and that sizes and shapes
are checked before anything is decoded. The launch scripts (launch/tpu_pod.sh, launch/slurm.sh) run dry,
with fake gcloud / srun, and must hand hostile arguments through verbatim without running any of them.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import subprocess

import numpy as np
import pytest

from data_pipeline.manifest import ManifestError, iter_manifest, read_manifest
from data_pipeline.media import MediaError, load_keypoints

ROOT = pathlib.Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "__pycache__", ".hypothesis", "node_modules"}
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "joblib"}
GREP_PATTERNS = [  # for files that do not parse; built so this file does not match itself
    re.compile(r"^\s*(import|from)\s+(" + "|".join(PICKLE_MODULES) + r")\b"),
    re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"),
    re.compile(r"trust_remote_code\s*=\s*True"),
    re.compile(r"allow_pickle\s*=\s*True"),
]


def python_files(root: pathlib.Path) -> list[pathlib.Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        out += [pathlib.Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(out)


def _is_true(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _call_name(func: ast.AST) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def violations(source: str, where: str) -> list[str]:
    """'file:line: what' for each unsafe construct in one Python source."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return [
            f"{where}:{i}: {line.strip()}"
            for i, line in enumerate(source.splitlines(), 1)
            if any(p.search(line) for p in GREP_PATTERNS)
        ]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad = [a.name for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
            found += [f"{where}:{node.lineno}: import {b} (pickle is banned)" for b in bad]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"{where}:{node.lineno}: from {node.module} import ... (pickle is banned)")
        elif isinstance(node, ast.Call):
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            name = _call_name(node.func)
            if name == "torch.load" and not _is_true(keywords.get("weights_only", ast.Constant(None))):
                found.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            if _is_true(keywords.get("trust_remote_code", ast.Constant(None))):
                found.append(f"{where}:{node.lineno}: trust_remote_code=True")
            if _is_true(keywords.get("allow_pickle", ast.Constant(None))):
                found.append(f"{where}:{node.lineno}: allow_pickle=True")
    return found


def test_repo_python_files_have_no_pickle_unsafe_torch_load_or_remote_code():
    files = python_files(ROOT)
    assert len(files) > 50, f"scanned only {len(files)} files under {ROOT}"
    found = []
    for path in files:
        found += violations(path.read_text(encoding="utf-8", errors="replace"), str(path.relative_to(ROOT)))
    assert not found, "unsafe loading:\n" + "\n".join(found)


def test_scanner_names_file_and_line_of_each_unsafe_construct():
    bad = (
        "import pickle\nfrom dill import loads\nimport torch\nx = torch.load(p)\n"
        "y = torch.load(p, weights_only=False)\nok = torch.load(p, weights_only=True)\n"
        "m = AutoModel.from_pretrained(d, trust_remote_code=True)\na = np.load(f, allow_pickle=True)\n"
    )
    found = violations(bad, "bad.py")
    assert [f.split(":")[1] for f in found] == ["1", "2", "4", "5", "7", "8"], found
    assert violations(bad + "def broken(:\n", "broken.py")[0].startswith("broken.py:1:")


def _manifest(root: pathlib.Path, *entries: dict) -> pathlib.Path:
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


@pytest.mark.parametrize("video", ["../outside.mp4", "sub/../../outside.mp4", "ABS", "link.mp4"])
def test_manifest_path_cannot_escape_its_root_unless_allowed(tmp_path, video):
    root = tmp_path / "clips"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"video")
    (root / "link.mp4").symlink_to(outside)
    video = str(outside) if video == "ABS" else video
    path = _manifest(root, {"clip_id": "a", "video": video})
    (item,) = iter_manifest(path)
    assert isinstance(item, ManifestError) and item.reason == "path_outside_root" and "line 1" in str(item)
    (entry,) = read_manifest(path, allow_outside_root=True)
    assert entry.video == outside.resolve()


def test_manifest_checks_file_size_before_decoding_and_survives_hostile_lines(tmp_path):
    (tmp_path / "big.mp4").write_bytes(b"\0" * 2048)
    lines = [
        json.dumps({"clip_id": "big", "video": "big.mp4"}).encode(),
        b"\xff\xfe not utf-8",
        b"[" * 100000 + b"]" * 100000,
        json.dumps({"clip_id": "nul", "video": "a\0b.mp4"}).encode(),
        json.dumps({"clip_id": "long", "video": "x" * 5000 + ".mp4"}).encode(),
    ]
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    items = list(iter_manifest(path, max_file_bytes=1024))
    assert all(isinstance(i, ManifestError) for i in items) and len(items) == 5
    assert items[0].reason == "file_too_large"
    assert "not UTF-8" in str(items[1]) and "nested too deeply" in str(items[2])
    assert [i.line for i in items] == [1, 2, 3, 4, 5]


def test_keypoints_npy_shape_and_size_are_checked_from_the_header_before_reading(tmp_path):
    path = tmp_path / "kp.npy"
    with open(path, "wb") as f:  # a header claiming 10^9 frames, then 12 bytes: no allocation may follow
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 133, 3)}
        )
        f.write(b"\0" * 12)
    with pytest.raises(MediaError, match="truncated"):
        load_keypoints(path)
    np.save(path, np.zeros((4, 17, 3), np.float32))
    with pytest.raises(MediaError, match=r"shape \(4, 17, 3\)"):
        load_keypoints(path)
    np.save(path, np.zeros((4, 133, 3), np.complex64))
    with pytest.raises(MediaError, match="dtype complex64"):
        load_keypoints(path)


def _hostile_args(tmp: pathlib.Path) -> list[str]:
    return [
        f"$(touch {tmp}/pwned1)",
        f"`touch {tmp}/pwned2`",
        f"; touch {tmp}/pwned3",
        f"--config.x=a b'c\"d && touch {tmp}/pwned4",
        "line\nbreak | cat",
    ]


def _fake(tmp: pathlib.Path, name: str, body: str) -> str:
    path = tmp / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("script", ["tpu_pod.sh", "slurm.sh"])
def test_launch_script_passes_hostile_arguments_verbatim_and_runs_none(tmp_path, script):
    """Dry run: gcloud / srun are fakes; gcloud's --command goes through a real `bash -c`, as on a worker."""
    path = ROOT / "launch" / script
    if not path.exists():
        pytest.skip(f"launch/{script} is not in this checkout")
    env = dict(os.environ, OMNIHUMAN_REMOTE_DIR=str(tmp_path))
    env["GCLOUD"] = _fake(
        tmp_path,
        "gcloud",
        'for a in "$@"; do [[ $a == --command=* ]] && cmd=${a#--command=}; done\nbash -c "$cmd"\n',
    )
    env["SRUN"] = _fake(tmp_path, "srun", 'while [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
    env["PYTHON"] = _fake(tmp_path, "python", "printf '%s\\0' \"$@\"\n")
    hostile = _hostile_args(tmp_path)
    if script == "tpu_pod.sh":
        argv = [str(path), "tpu-name", "zone", "--", env["PYTHON"], "-m", "launch.train", *hostile]
    else:
        argv = [str(path), *hostile]
    out = subprocess.run(argv, env=env, capture_output=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr.decode()
    received = out.stdout.decode().split("\0")[:-1]
    assert received == ["-m", "launch.train", *hostile], received
    assert not list(tmp_path.glob("pwned*")), "a launch script let the shell run part of an argument"
