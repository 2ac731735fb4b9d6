"""RootedFiles: sandbox file access that stays inside the sandbox root and acts as the sandbox user.

Each test builds a fake sandbox root in tmp_path (home/user owned by 1000, an etc with a passwd,
root-only files) next to a "host" secret outside it. Tests marked `system` need root: they switch
fsuid, chown and mount; the others run as anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import os
import platform
import stat
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentcell.errors import (
    Conflict,
    Internal,
    InvalidArgument,
    NotFound,
    NotRunning,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
)
from agentcell.server.sandbox.driver import SandboxFiles
from agentcell.server.sandbox.linux.files import MAX_CHUNK_BYTES, RootedFiles, parse_path, translate_os_error

ROOT_ONLY = [pytest.mark.system]  # needs root (setfsuid, chown, mount); `make test` runs as root
UID = GID = 1000
MiB = 1 << 20
PASSWD = b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"
HOST_SECRET = b"HOST SECRET - must never be read through a sandbox\n"


def system(test: Callable[..., object]) -> Callable[..., object]:
    for mark in ROOT_ONLY:
        test = mark(test)
    return test


@dataclass
class Sandbox:
    root: Path
    home: Path
    host_secret: Path
    outside: Path

    @property
    def host_secret_rel(self) -> str:
        """The host secret's path with the leading / dropped: what an escape would append."""
        return str(self.host_secret).lstrip("/")


def _own(path: Path) -> None:
    """Hand what a test made as root to the sandbox user, as if the user had made it."""
    if os.geteuid() != 0:
        return
    os.chown(path, UID, GID, follow_symlinks=False)
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _own(child)


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    root = tmp_path / "root"
    home = root / "home" / "user"
    home.mkdir(parents=True)
    root.chmod(0o755)
    _own(home)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_bytes(PASSWD)
    (root / "etc" / "shadow").write_bytes(b"root:$6$secret\n")
    (root / "etc" / "shadow").chmod(0o600)
    (root / "etc" / "group-only").write_bytes(b"root group may read\n")
    (root / "etc" / "group-only").chmod(0o640)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret.txt").write_bytes(HOST_SECRET)
    (host / "outside").mkdir()
    (host / "outside" / "keep.txt").write_bytes(b"keep me\n")
    return Sandbox(root, home, host / "secret.txt", host / "outside")


@pytest.fixture
def files(sandbox: Sandbox) -> RootedFiles:
    return RootedFiles(str(sandbox.root), UID, GID)


@pytest.fixture(params=[pytest.param("sandbox user", marks=ROOT_ONLY), "server"])
def confined(request: pytest.FixtureRequest, sandbox: Sandbox) -> RootedFiles:
    """Both identities: as the server (root when run as root) only openat2 stands between a
    symlink and the host, which is what the confinement tests must prove."""
    if request.param == "server":
        return RootedFiles(str(sandbox.root), None, None)
    return RootedFiles(str(sandbox.root), UID, GID)


@pytest.fixture
def mount() -> Iterator[Callable[[str, Path, str], None]]:
    """mount(fstype, target, options); every mount is undone at teardown, and a busy one fails."""
    mounted: list[Path] = []

    def do_mount(fstype: str, target: Path, options: str) -> None:
        subprocess.run(["mount", "-t", fstype, "-o", options, fstype, str(target)], check=True)
        mounted.append(target)

    yield do_mount
    leaked = []
    for target in reversed(mounted):
        if subprocess.run(["umount", str(target)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], check=False)
            leaked.append(target)
    assert not leaked, f"mounts were still busy at teardown: {leaked}"


async def chunks(*blobs: bytes) -> AsyncIterator[bytes]:
    for blob in blobs:
        yield blob


async def read_all(files: SandboxFiles, path: str, chunk_bytes: int = MAX_CHUNK_BYTES) -> bytes:
    async with contextlib.aclosing(files.read(path, chunk_bytes)) as stream:
        return b"".join([chunk async for chunk in stream])


def temp_files(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(".acell-write-")]


def thread_status() -> dict[str, str]:
    with open("/proc/thread-self/status") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)


def parse_status(text: bytes) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.decode().splitlines() if ":\t" in line)


# --- unit level: no sandbox, no root ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("notes.txt", ("home", "user", "notes.txt")),
        ("./a//b/", ("home", "user", "a", "b")),
        ("/etc/passwd", ("etc", "passwd")),
        ("/", ()),
        ("...", ("home", "user", "...")),
    ],
)
def test_paths_are_absolute_or_relative_to_home(path: str, parts: tuple[str, ...]) -> None:
    assert parse_path(path) == parts


@pytest.mark.parametrize("path", ["..", "../etc/passwd", "/home/user/../../etc", "a/b/..", "/.."])
def test_dotdot_is_refused(path: str) -> None:
    with pytest.raises(InvalidArgument, match=r"must not contain '\.\.'"):
        parse_path(path)


@pytest.mark.parametrize("path", ["a\0b", "/etc/passwd\0", ""])
def test_nul_and_empty_are_refused(path: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_path(path)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (errno.ENOENT, NotFound),
        (errno.ENOTDIR, InvalidArgument),
        (errno.EISDIR, InvalidArgument),
        (errno.EACCES, PermissionDenied),
        (errno.EPERM, PermissionDenied),
        (errno.EROFS, PermissionDenied),
        (errno.ENOSPC, QuotaExceeded),
        (errno.EDQUOT, QuotaExceeded),
        (errno.EXDEV, InvalidArgument),
        (errno.ELOOP, InvalidArgument),
        (errno.EIO, Internal),
    ],
)
def test_errno_becomes_one_domain_error(code: int, kind: type[Exception]) -> None:
    error = translate_os_error(OSError(code, os.strerror(code)), "/home/user/x", "write")
    assert type(error) is kind
    assert "/home/user/x" in error.message


def test_error_messages_say_what_happened() -> None:
    denied = translate_os_error(OSError(errno.EACCES, "denied"), "/etc/x", "write")
    assert denied.message == "the sandbox user may not write /etc/x"
    assert translate_os_error(OSError(errno.ENOENT, "gone"), "/a", "read").message == (
        "no such file or directory: /a"
    )
    assert "EIO" in translate_os_error(OSError(errno.EIO, "io"), "/a", "read").message


def test_uid_and_gid_come_together() -> None:
    with pytest.raises(ValueError, match="together"):
        RootedFiles("/", 1000, None)


async def test_list_depth_is_bounded(sandbox: Sandbox) -> None:
    files = RootedFiles(str(sandbox.root), None, None)
    for depth in (0, 17):
        with pytest.raises(InvalidArgument, match="depth"):
            await files.list("/", depth)


async def test_huge_listings_are_refused(sandbox: Sandbox) -> None:
    files = RootedFiles(str(sandbox.root), None, None, max_list_entries=3)
    assert len(await files.list("/", depth=1)) == 3
    with pytest.raises(PayloadTooLarge, match="over 3 entries"):
        await files.list("/", depth=2)


async def test_root_itself_cannot_be_removed_or_written(sandbox: Sandbox) -> None:
    files = RootedFiles(str(sandbox.root), None, None)
    with pytest.raises(InvalidArgument):
        await files.remove("/")
    with pytest.raises(InvalidArgument):
        await files.write("/", chunks(b"x"))
    assert (await files.stat("/")).type == "dir"


async def test_a_replaced_root_is_not_followed(tmp_path: Path, sandbox: Sandbox) -> None:
    """A recycled pid makes /proc/<pid>/root another process's root: refuse it, don't follow."""
    other = tmp_path / "other"
    (other / "etc").mkdir(parents=True)
    (other / "etc" / "passwd").write_bytes(b"someone else's\n")
    link = tmp_path / "current-root"
    link.symlink_to(sandbox.root)
    files = RootedFiles(str(link), None, None)
    assert await read_all(files, "/etc/passwd") == PASSWD
    link.unlink()
    link.symlink_to(other)
    with pytest.raises(NotRunning):
        await read_all(files, "/etc/passwd")
    link.unlink()
    with pytest.raises(NotRunning):
        await files.stat("/")


# --- confinement: as the server and as the sandbox user -------------------------------------------


async def test_absolute_symlink_to_slash_stays_inside(confined: RootedFiles, sandbox: Sandbox) -> None:
    (sandbox.home / "evil").symlink_to("/")
    with pytest.raises(NotFound):
        await read_all(confined, f"evil/{sandbox.host_secret_rel}")
    assert await read_all(confined, "evil/etc/passwd") == PASSWD
    assert (await confined.stat("evil")).symlink_target == "/"


async def test_relative_dotdot_symlinks_stay_inside(confined: RootedFiles, sandbox: Sandbox) -> None:
    (sandbox.home / "up").symlink_to("../../../../../../../../../..")
    (sandbox.home / "a").symlink_to("b")
    (sandbox.home / "b").symlink_to("../../../../../../../etc")
    with pytest.raises(NotFound):
        await read_all(confined, f"up/{sandbox.host_secret_rel}")
    assert await read_all(confined, "up/etc/passwd") == PASSWD
    assert await read_all(confined, "a/passwd") == PASSWD
    listed = await confined.list("up/etc")
    assert {entry.path for entry in listed} >= {"/home/user/up/etc/passwd"}


async def test_symlink_to_a_host_path_resolves_in_the_sandbox(
    confined: RootedFiles, sandbox: Sandbox
) -> None:
    (sandbox.home / "direct").symlink_to(sandbox.host_secret)
    with pytest.raises(NotFound):
        await read_all(confined, "direct")
    with pytest.raises(NotFound):
        await confined.list("direct")


async def test_write_to_a_final_symlink_replaces_the_link(confined: RootedFiles, sandbox: Sandbox) -> None:
    """rename() replaces the final component: the file a symlink points at is never written."""
    (sandbox.home / "to-host").symlink_to(sandbox.host_secret)
    (sandbox.home / "to-passwd").symlink_to("/etc/passwd")
    await confined.write("to-host", chunks(b"pwned"))
    await confined.write("to-passwd", chunks(b"pwned"))
    assert sandbox.host_secret.read_bytes() == HOST_SECRET
    assert (sandbox.root / "etc" / "passwd").read_bytes() == PASSWD
    assert (sandbox.home / "to-host").read_bytes() == b"pwned"
    assert not (sandbox.home / "to-host").is_symlink()


async def test_write_through_a_symlinked_parent_stays_inside(confined: RootedFiles, sandbox: Sandbox) -> None:
    (sandbox.home / "evil").symlink_to("/")
    (sandbox.home / "hostdir").symlink_to(sandbox.host_secret.parent)
    await confined.write("evil/tmp/dropped", chunks(b"inside"))
    assert (sandbox.root / "tmp" / "dropped").read_bytes() == b"inside"
    with pytest.raises(NotFound):  # its target does not exist in the sandbox, and mkdir -p won't make it
        await confined.write("hostdir/secret.txt", chunks(b"pwned"))
    assert sandbox.host_secret.read_bytes() == HOST_SECRET


async def test_remove_never_follows_symlinks_out(confined: RootedFiles, sandbox: Sandbox) -> None:
    tree = sandbox.home / "tree" / "sub"
    tree.mkdir(parents=True)
    (tree / "file").write_bytes(b"x")
    (tree / "abs").symlink_to(sandbox.outside)
    (tree / "rel").symlink_to("../../../../../../../../..")
    (tree / "etc").symlink_to("/etc")
    (sandbox.home / "link-to-etc").symlink_to("/etc")
    _own(sandbox.home)
    await confined.remove("tree")
    await confined.remove("link-to-etc")
    assert not (sandbox.home / "tree").exists()
    assert not (sandbox.home / "link-to-etc").is_symlink()
    assert (sandbox.outside / "keep.txt").read_bytes() == b"keep me\n"
    assert (sandbox.root / "etc" / "passwd").read_bytes() == PASSWD
    with pytest.raises(NotFound):
        await confined.remove("tree")


async def test_read_refuses_fifos_and_devices_without_blocking(
    confined: RootedFiles, sandbox: Sandbox
) -> None:
    os.mkfifo(sandbox.home / "pipe")
    _own(sandbox.home / "pipe")
    with pytest.raises(InvalidArgument, match="regular file"):
        await asyncio.wait_for(read_all(confined, "pipe"), 5)
    with pytest.raises(InvalidArgument, match="directory"):
        await read_all(confined, "/etc")
    if os.geteuid() == 0:
        os.mknod(sandbox.home / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        with pytest.raises(InvalidArgument, match="regular file"):
            await asyncio.wait_for(read_all(confined, "null"), 5)


# --- as the sandbox user (root only) --------------------------------------------------------------


@system
async def test_root_only_files_are_denied(files: RootedFiles, sandbox: Sandbox) -> None:
    """The worker really is uid 1000 on the filesystem: root's 0600 and 0640 files are closed."""
    with pytest.raises(PermissionDenied, match="may not read /etc/shadow"):
        await read_all(files, "/etc/shadow")
    with pytest.raises(PermissionDenied):
        await read_all(files, "/etc/group-only")
    assert await read_all(RootedFiles(str(sandbox.root), None, None), "/etc/shadow")


@system
async def test_root_owned_dirs_are_not_writable(files: RootedFiles, sandbox: Sandbox) -> None:
    with pytest.raises(PermissionDenied, match="may not write /etc/new"):
        await files.write("/etc/new", chunks(b"x"))
    with pytest.raises(PermissionDenied):
        await files.make_dir("/etc/sub/dir")
    with pytest.raises(PermissionDenied):
        await files.remove("/etc/passwd")
    with pytest.raises(PermissionDenied):
        await files.rename("/etc/passwd", "stolen")
    assert sorted(os.listdir(sandbox.root / "etc")) == ["group-only", "passwd", "shadow"]


@system
async def test_written_files_and_parents_belong_to_the_user(files: RootedFiles, sandbox: Sandbox) -> None:
    written = await files.write("new/deep/file.txt", chunks(b"hello ", b"world"))
    assert (written.path, written.name, written.type, written.size) == (
        "/home/user/new/deep/file.txt",
        "file.txt",
        "file",
        11,
    )
    for path in ("new", "new/deep", "new/deep/file.txt"):
        st = os.lstat(sandbox.home / path)
        assert (st.st_uid, st.st_gid) == (UID, GID), path
    assert stat.S_IMODE(os.lstat(sandbox.home / "new/deep/file.txt").st_mode) == 0o644
    assert await read_all(files, "/home/user/new/deep/file.txt") == b"hello world"


@system
async def test_replacing_a_file_keeps_its_mode(files: RootedFiles, sandbox: Sandbox) -> None:
    await files.write("run.sh", chunks(b"#!/bin/sh\n"))
    os.chmod(sandbox.home / "run.sh", 0o755)
    replaced = await files.write("run.sh", chunks(b"#!/bin/sh\necho hi\n"))
    assert replaced.mode == 0o755


@system
async def test_worker_credentials_are_dropped_and_restored(
    sandbox: Sandbox, mount: Callable[..., None]
) -> None:
    """Inside a call the thread has fsuid/fsgid 1000, no groups and no effective capabilities;
    after it, everything it had (including supplementary groups) is back."""
    number = {"x86_64": 116, "aarch64": 159}.get(platform.machine())
    if number is None:
        pytest.skip("setgroups syscall number unknown here")

    def give_groups() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(number, 2, (ctypes.c_uint * 2)(0, 4242)) == 0

    (sandbox.root / "proc").mkdir()
    mount("proc", sandbox.root / "proc", "ro")
    pool = ThreadPoolExecutor(1, initializer=give_groups)
    try:
        user = RootedFiles(str(sandbox.root), UID, GID, executor=pool)
        # the files API refuses /proc reads, so the thread's status is read by a call of its own
        inside = await user._call(thread_status, "/proc/thread-self/status", "read")
        assert inside["Uid"].split()[3] == inside["Gid"].split()[3] == "1000"
        assert inside["Groups"].split() == []
        assert int(inside["CapEff"], 16) == 0
        with pytest.raises(PermissionDenied):  # group 0 would open it
            await read_all(user, "/etc/group-only")
        escape = f"/proc/self/root/{sandbox.host_secret_rel}"  # a magic link to the host's /
        with pytest.raises((InvalidArgument, PermissionDenied)):  # the user fails ptrace checks first
            await read_all(user, escape)
        after = pool.submit(thread_status).result()
        assert after["Uid"].split()[3] == after["Gid"].split()[3] == "0"
        assert after["Groups"].split() == ["0", "4242"]
        assert after["CapEff"] == after["CapPrm"]
        server = RootedFiles(str(sandbox.root), None, None, executor=pool)
        assert await read_all(server, "/etc/shadow")
        with pytest.raises(InvalidArgument, match="magic link"):
            await read_all(server, escape)
    finally:
        pool.shutdown()


@system
async def test_64_mib_streams_and_round_trips(files: RootedFiles, sandbox: Sandbox) -> None:
    block = os.urandom(MiB)
    sent = hashlib.sha256()

    async def produce() -> AsyncIterator[bytes]:
        for index in range(64):
            chunk = index.to_bytes(8, "big") + block[8:]
            sent.update(chunk)
            yield chunk

    written = await files.write("big.bin", produce())
    assert written.size == 64 * MiB
    received, sizes = hashlib.sha256(), []
    async with contextlib.aclosing(files.read("big.bin", chunk_bytes=8 * MiB)) as stream:
        async for chunk in stream:
            sizes.append(len(chunk))
            received.update(chunk)
    assert received.hexdigest() == sent.hexdigest()
    assert max(sizes) <= MiB
    assert sum(sizes) == 64 * MiB


@system
async def test_readers_never_see_a_half_written_file(files: RootedFiles, sandbox: Sandbox) -> None:
    old, new = b"old" * 1000, b"N" * (10 * 65536)
    target = sandbox.home / "atomic.txt"
    await files.write("atomic.txt", chunks(old))
    seen: set[bytes] = set()
    saw_temp = False
    done = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        for _ in range(10):
            await asyncio.sleep(0.02)
            yield b"N" * 65536

    async def poll() -> None:
        nonlocal saw_temp
        while not done.is_set():
            seen.add(target.read_bytes())
            saw_temp = saw_temp or bool(temp_files(sandbox.home))
            await asyncio.sleep(0.002)

    poller = asyncio.create_task(poll())
    try:
        await files.write("atomic.txt", slow())
    finally:
        done.set()
        await poller
    assert seen <= {old, new}
    assert saw_temp
    assert target.read_bytes() == new
    assert temp_files(sandbox.home) == []


@system
async def test_full_disk_raises_quota_exceeded_and_leaves_nothing(
    files: RootedFiles, sandbox: Sandbox, mount: Callable[..., None]
) -> None:
    small = sandbox.home / "small"
    small.mkdir()
    mount("tmpfs", small, f"size=1m,uid={UID},gid={GID},mode=0755")
    await files.write("small/keep", chunks(b"old"))
    with pytest.raises(QuotaExceeded, match="disk is full"):
        await files.write("small/keep", chunks(*[b"x" * 65536] * 32))
    assert os.listdir(small) == ["keep"]
    assert (small / "keep").read_bytes() == b"old"
    with pytest.raises(InvalidArgument, match="across sandbox mounts"):  # rename(2) cannot cross mounts
        await files.rename("small/keep", "keep")


@system
async def test_cancelled_or_failed_writes_leave_no_temp_file(files: RootedFiles, sandbox: Sandbox) -> None:
    stalled, forever = asyncio.Event(), asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"partial"
        stalled.set()
        await forever.wait()
        yield b"never"

    async def breaks() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("client went away")

    task = asyncio.create_task(files.write("stalled.txt", stalls()))
    await stalled.wait()
    assert temp_files(sandbox.home)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(RuntimeError, match="went away"):
        await files.write("broken.txt", breaks())
    assert os.listdir(sandbox.home) == []


@system
async def test_write_onto_a_directory_is_refused(files: RootedFiles, sandbox: Sandbox) -> None:
    await files.make_dir("adir")
    with pytest.raises(InvalidArgument, match="is a directory"):
        await files.write("adir", chunks(b"x"))
    assert temp_files(sandbox.home) == []


@system
async def test_list_is_breadth_first_and_does_not_follow_symlinked_dirs(
    files: RootedFiles, sandbox: Sandbox
) -> None:
    await files.write("proj/a.txt", chunks(b"a"))
    await files.write("proj/src/main.py", chunks(b"m"))
    await files.write("proj/src/pkg/mod.py", chunks(b"x"))
    (sandbox.home / "proj" / "out").symlink_to("/")
    (sandbox.home / "proj" / "closed").mkdir(mode=0o700)  # root's: listed, not descended
    (sandbox.home / "proj" / "closed" / "hidden").write_bytes(b"")
    top = await files.list("proj")
    assert [(e.name, e.type) for e in top] == [
        ("a.txt", "file"),
        ("closed", "dir"),
        ("out", "symlink"),
        ("src", "dir"),
    ]
    assert top[2].symlink_target == "/"
    deep = [e.path for e in await files.list("/home/user/proj", depth=16)]
    assert deep == [
        "/home/user/proj/a.txt",
        "/home/user/proj/closed",
        "/home/user/proj/out",
        "/home/user/proj/src",
        "/home/user/proj/src/main.py",
        "/home/user/proj/src/pkg",
        "/home/user/proj/src/pkg/mod.py",
    ]
    assert len(await files.list("proj", depth=2)) == 6
    with pytest.raises(InvalidArgument, match="expected a directory"):
        await files.list("proj/a.txt")
    with pytest.raises(NotFound):
        await files.list("nope")


@system
async def test_rename_moves_and_creates_parents(files: RootedFiles, sandbox: Sandbox) -> None:
    await files.write("a.txt", chunks(b"a"))
    moved = await files.rename("a.txt", "/home/user/x/y/b.txt")
    assert (moved.path, moved.type) == ("/home/user/x/y/b.txt", "file")
    assert os.lstat(sandbox.home / "x" / "y").st_uid == UID
    await files.rename("x", "z")
    assert (sandbox.home / "z" / "y" / "b.txt").read_bytes() == b"a"
    with pytest.raises(NotFound, match="no such file or directory: /home/user/missing"):
        await files.rename("missing", "other")
    (sandbox.home / "to-host").symlink_to(sandbox.host_secret)
    await files.rename("z/y/b.txt", "to-host")
    assert sandbox.host_secret.read_bytes() == HOST_SECRET
    assert (sandbox.home / "to-host").read_bytes() == b"a"


@system
async def test_make_dir_is_mkdir_p(files: RootedFiles, sandbox: Sandbox) -> None:
    made = await files.make_dir("a/b/c")
    assert (made.path, made.type) == ("/home/user/a/b/c", "dir")
    assert (await files.make_dir("a/b/c")).type == "dir"
    for path in ("a", "a/b", "a/b/c"):
        assert os.lstat(sandbox.home / path).st_uid == UID
    await files.write("a/file", chunks(b"f"))
    with pytest.raises(Conflict):
        await files.make_dir("a/file")
    with pytest.raises(InvalidArgument, match="expected a directory"):
        await files.make_dir("a/file/sub")


@system
async def test_remove_handles_trees_deeper_than_the_recursion_limit(
    files: RootedFiles, sandbox: Sandbox
) -> None:
    fd = os.open(sandbox.home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1500):
            os.mkdir("d", dir_fd=fd)
            os.chown("d", UID, GID, dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    await files.remove("d")
    assert os.listdir(sandbox.home) == []
