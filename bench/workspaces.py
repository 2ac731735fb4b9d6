"""Workspaces for the storage benchmarks, and the tar baseline they are compared with."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

OLD_NS = 1_700_000_000 * 10**9  # files that have been sitting a while (not "racily" recent)
EXCLUDES = ("node_modules", ".venv", "__pycache__", ".cache", ".npm")
WORDS = [b"def", b"return", b"import", b"self", b"value", b"const", b"function", b"(x)", b"\n    ", b"="]


def source_text(rng: random.Random, size: int) -> bytes:
    """Compressible, source-like bytes (zlib level 1 shrinks them to ~40%)."""
    out = bytearray()
    while len(out) < size:
        out += rng.choice(WORDS) + str(rng.randint(0, 999)).encode() + b" "
    return bytes(out[:size])


def make_ten_mb(root: Path, seed: int = 1) -> None:
    """100 files, 10 MB: half source-like text, half incompressible binary, in 10 directories."""
    rng = random.Random(seed)
    for i in range(100):
        path = root / f"dir{i % 10}" / f"file{i:03d}.{'py' if i % 2 else 'bin'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(source_text(rng, 100_000) if i % 2 else rng.randbytes(100_000))
    age(root)


def make_node_project(root: Path, seed: int = 2) -> None:
    """~50 source files plus a node_modules of 20 000 small files in 1 000 packages."""
    rng = random.Random(seed)
    for i in range(50):
        path = root / ("src" if i < 40 else "test") / f"mod{i:02d}.js"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(source_text(rng, rng.randint(500, 6000)))
    (root / "package.json").write_bytes(b'{"name": "app", "version": "1.0.0"}\n')
    for pkg in range(1000):
        base = root / "node_modules" / f"pkg{pkg:04d}"
        (base / "lib").mkdir(parents=True)
        for j in range(20):
            (base / ("lib" if j else "") / f"f{j}.js").write_bytes(source_text(rng, 300))
    age(root)


def age(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(Path(dirpath) / name, ns=(OLD_NS, OLD_NS), follow_symlinks=False)


def tar_create_ms(src: Path, archive: Path, excludes: Sequence[str] = ()) -> float:
    flags = [f"--exclude={pattern}" for pattern in excludes]
    started = time.perf_counter()
    subprocess.run(["tar", "-czf", str(archive), *flags, "-C", str(src), "."], check=True)
    return (time.perf_counter() - started) * 1000


def tar_extract_ms(archive: Path, dest: Path) -> float:
    fresh_dir(dest)
    started = time.perf_counter()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(dest)], check=True)
    return (time.perf_counter() - started) * 1000


def fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def drop_page_cache_hint() -> None:
    """Flush dirty pages so one run's writeback does not land in the next run's timing."""
    os.sync()
