"""Builds `acell-helper` from the helper.c shipped with this package, once per source version.

The binary lands in `<state dir>/bin/acell-helper-<first 12 hex of the source's sha256>`, so an
upgraded package never runs a stale helper and a second call is one stat(). Compiling takes
about a second; the driver does it in a worker thread on first use.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from agentcell.errors import Internal, Unavailable

SOURCE_NAME = "helper.c"
CFLAGS = ("-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-fno-asynchronous-unwind-tables")


def helper_source() -> bytes:
    return resources.files("agentcell.server.sandbox.linux").joinpath(SOURCE_NAME).read_bytes()


def helper_path(state_dir: Path) -> Path:
    """Return the compiled helper for the current source, compiling it if needed."""
    source = helper_source()
    target = state_dir / "bin" / f"acell-helper-{hashlib.sha256(source).hexdigest()[:12]}"
    remove_dead_builds(target.parent)
    if target.exists():
        return target
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A unique temporary name and rename(2): concurrent builders never see half a binary. The
    # builder's pid in it tells a later one whether the file is still being written.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}")
    try:
        _compile(source, tmp)
        os.chmod(tmp, 0o700)
        os.rename(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def remove_dead_builds(bin_dir: Path) -> None:
    """Remove the half-built binaries of builders that died while compiling: a server SIGKILLed
    then left its `.acell-helper-<hash>.<pid>.<random>` for good (older versions named it
    without the pid). Those of a builder still running are its own to rename or remove."""
    for leftover in bin_dir.glob(".acell-helper-*"):
        fields = leftover.name.split(".")  # ['', 'acell-helper-<hash>', '<pid>', '<random>']
        builder = fields[2] if len(fields) == 4 else ""
        if not (builder.isdigit() and _is_running(int(builder))):
            leftover.unlink(missing_ok=True)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: running
        pass
    return True


def _compile(source: bytes, output: Path) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise Unavailable(
            "building the sandbox helper needs gcc and a static libc (apt install gcc libc6-dev)"
        )
    result = subprocess.run(
        [cc, *CFLAGS, "-o", str(output), "-x", "c", "-"],
        input=source,
        capture_output=True,
        check=False,
    )
    if result.returncode == 0:
        return
    detail = result.stderr.decode(errors="replace").strip()[-2000:]
    if "cannot find -lc" in detail:
        raise Unavailable("building the sandbox helper needs a static libc (apt install libc6-dev)")
    raise Internal(f"compiling the sandbox helper failed: {detail}")
