"""One sandbox against the limits the kernel keeps per host uid or for the whole host.

Every sandbox runs as the same host uid (1000) in the host's user namespace, so whatever the
kernel counts per user is one pool for all of them: inotify instances and watches, pipe buffer
pages, fanotify groups; and some counts are the whole host's (Linux AIO contexts). Each test lets
sandbox A take more of one pool than the kernel's default allows, then checks that sandbox B (and
the host) still get theirs. The fixes: the driver lifts those host sysctls at start
(`raise_shared_host_limits`: A's memory cgroup, charged for these objects, bounds it instead) and
seccomp refuses fanotify.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import platform
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.server.sandbox.driver import ExecSpec, SandboxSpec
from agentcell.server.sandbox.linux.driver import SHARED_HOST_LIMITS, LinuxDriver, raise_shared_host_limits
from tests.system.conftest import MiB, run

pytestmark = pytest.mark.system

PRELUDE = """
import ctypes, fcntl, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
def why():
    return os.strerror(ctypes.get_errno())
"""
IO_SETUP = 206 if platform.machine() == "x86_64" else 0
IO_DESTROY = 207 if platform.machine() == "x86_64" else 1

# Each holder takes what it can (up to a count above the kernel's default for a whole uid),
# prints how much it got and keeps it until killed.
INOTIFY_INSTANCES = """
fds = []
while len(fds) < 300 and (fd := libc.inotify_init1(0)) >= 0:
    fds.append(fd)
print(len(fds), flush=True)
time.sleep(300)
"""

INOTIFY_WATCHES = """
os.makedirs("/tmp/w", exist_ok=True)
paths = []
for i in range(2000):
    paths.append(f"/tmp/w/{i}".encode())
    open(paths[-1], "w").close()
watches = 0
for _ in range(100):
    fd = libc.inotify_init1(0)
    added = [libc.inotify_add_watch(fd, path, 0x2) for path in paths] if fd >= 0 else [-1]
    watches += sum(wd >= 0 for wd in added)
    if min(added) < 0:
        break
print(watches, flush=True)
time.sleep(300)
"""

BIG_PIPES = """
pipes = 0
for _ in range(100):
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError:
        break
    pipes += 1
print(pipes, flush=True)
time.sleep(300)
"""

# Two contexts of 65536 events: as many as fs.aio-max-nr lets the whole host have by default.
AIO_CONTEXTS = """
ctx, taken, nr = ctypes.c_ulong(), 0, int(sys.argv[1])
while taken < 2 and libc.syscall(nr, 1 << 16, ctypes.byref(ctx)) == 0:
    ctx, taken = ctypes.c_ulong(), taken + 1
print(taken, flush=True)
time.sleep(300)
"""

FANOTIFY_GROUPS = """
fds = []
while len(fds) < 200 and (fd := libc.fanotify_init(0x200, 0)) >= 0:  # FAN_REPORT_FID
    fds.append(fd)
print(len(fds), flush=True)
time.sleep(300)
"""

# What sandbox B checks: each prints "ok" or why not.
INOTIFY_PROBE = """
fd = libc.inotify_init1(0)
if fd < 0:
    print("inotify_init1:", why())
elif libc.inotify_add_watch(fd, b"/tmp", 0x2) < 0:
    print("inotify_add_watch:", why())
else:
    print("ok")
"""

PIPE_PROBE = """
r, w = os.pipe()
size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
try:
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
    print("ok" if size == 65536 else f"a new pipe holds {size} bytes")
except OSError as e:
    print(f"a new pipe holds {size} bytes; F_SETPIPE_SZ 1 MiB: {e}")
"""

AIO_PROBE = f"""
ctx = ctypes.c_ulong()
print("ok" if libc.syscall({IO_SETUP}, 128, ctypes.byref(ctx)) == 0 else f"io_setup: {{why()}}")
"""

FANOTIFY_PROBE = """
print("ok" if libc.fanotify_init(0x200, 0) >= 0 else f"fanotify_init: {why()}")
"""


@pytest.fixture
async def pair(linux_driver: LinuxDriver) -> AsyncIterator[LinuxDriver]:
    """Sandboxes "a" (hostile) and "b" (its neighbour) on one driver."""
    for sandbox_id in ("a", "b"):
        await linux_driver.start(SandboxSpec(sandbox_id=sandbox_id, memory_bytes=256 * MiB))
    yield linux_driver


@contextlib.asynccontextmanager
async def holding(driver: LinuxDriver, hostile: str, *args: str) -> AsyncIterator[int]:
    """Sandbox a runs `hostile` until it holds what it took (how much: the value), then is killed."""
    holder = await driver.exec("a", ExecSpec(argv=["python3", "-c", PRELUDE + hostile, *args]))
    try:
        taken = await asyncio.wait_for(holder.stdout.readline(), 60)
        assert taken, (await holder.stderr.read()).decode()
        yield int(taken)
    finally:
        holder.send_signal(9)
        await asyncio.wait_for(holder.wait(), 30)


async def probe(driver: LinuxDriver, code: str) -> str:
    """What sandbox b's probe prints: "ok" or why not."""
    result = await run(driver, "b", ["python3", "-c", PRELUDE + code])
    assert result.code == 0, result.stderr
    return result.stdout.strip()


def host_io_setup() -> str:
    """io_setup from the test process itself, as root: the host's share of fs.aio-max-nr."""
    libc = ctypes.CDLL(None, use_errno=True)
    ctx = ctypes.c_ulong()
    if libc.syscall(IO_SETUP, 128, ctypes.byref(ctx)) != 0:
        return f"io_setup: {ctypes.get_errno()}"
    libc.syscall(IO_DESTROY, ctx)
    return "ok"


async def test_inotify_instances_of_one_sandbox_leave_others_theirs(pair: LinuxDriver) -> None:
    """fs.inotify.max_user_instances (128 by default) is per uid: a sandbox holding 128 made every
    other one's inotify_init fail with EMFILE (file watchers: node fs.watch, vite, uvicorn --reload)."""
    async with holding(pair, INOTIFY_INSTANCES) as taken:
        assert (taken, await probe(pair, INOTIFY_PROBE)) == (300, "ok")


async def test_inotify_watches_of_one_sandbox_leave_others_theirs(pair: LinuxDriver) -> None:
    """fs.inotify.max_user_watches (192536 here, from the RAM size) is per uid too: past it every
    other sandbox's inotify_add_watch failed with ENOSPC. 100 instances watching 2000 files each."""
    async with holding(pair, INOTIFY_WATCHES) as taken:
        assert (taken, await probe(pair, INOTIFY_PROBE)) == (200_000, "ok")


async def test_big_pipes_of_one_sandbox_leave_others_full_size_pipes(pair: LinuxDriver) -> None:
    """fs.pipe-user-pages-soft (16384 pages) is per uid: past it, every new pipe of that uid held
    2 pages instead of 16 (8 KiB: a writer blocks 8x sooner), and F_SETPIPE_SZ failed with EPERM."""
    async with holding(pair, BIG_PIPES) as taken:
        assert (taken, await probe(pair, PIPE_PROBE)) == (100, "ok")


async def test_aio_contexts_of_one_sandbox_leave_the_host_and_others_theirs(pair: LinuxDriver) -> None:
    """fs.aio-max-nr (65536) counts every io_setup on the host, root's too: one sandbox's two
    contexts of 65536 events made io_setup fail with EAGAIN everywhere, the host's databases on
    libaio included."""
    async with holding(pair, AIO_CONTEXTS, str(IO_SETUP)) as taken:
        assert (taken, await probe(pair, AIO_PROBE), host_io_setup()) == (2, "ok", "ok")


async def test_fanotify_is_refused(pair: LinuxDriver) -> None:
    """Unprivileged fanotify (Linux 5.13+) counts groups per uid (128): one sandbox took them all.
    Refused by seccomp as in Docker's default profile (CAP_SYS_ADMIN only); nothing else needs it."""
    async with holding(pair, FANOTIFY_GROUPS) as taken:
        assert (taken, await probe(pair, FANOTIFY_PROBE)) == (0, "fanotify_init: Operation not permitted")


def fake_proc_sys(root: Path, values: dict[str, int]) -> Path:
    for name, value in values.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{value}\n")
    return root


def read_all(root: Path) -> dict[str, int]:
    return {limit.name: int((root / limit.name).read_text()) for limit in SHARED_HOST_LIMITS}


def test_host_limits_are_raised_never_lowered(tmp_path: Path) -> None:
    """Kernel defaults are lifted; a host's own higher value (systemd's file-max) stays; 0, which
    means no limit for pipe pages, stays."""
    before = {limit.name: 128 for limit in SHARED_HOST_LIMITS}
    before |= {"fs/file-max": (1 << 63) - 1, "fs/pipe-user-pages-hard": 0}
    root = fake_proc_sys(tmp_path, before)
    raise_shared_host_limits(root, release="6.1.0-13-amd64")
    wanted = {limit.name: limit.wanted for limit in SHARED_HOST_LIMITS}
    assert read_all(root) == wanted | {"fs/file-max": (1 << 63) - 1}


def test_host_limits_stay_on_kernels_that_do_not_charge_them(tmp_path: Path) -> None:
    """Before 5.14 some of these objects were not charged to a memory cgroup: lifting the count
    would leave one sandbox's use unbounded."""
    before = {limit.name: 128 for limit in SHARED_HOST_LIMITS}
    root = fake_proc_sys(tmp_path, before)
    raise_shared_host_limits(root, release="5.10.0-28-amd64")
    assert read_all(root) == before
