"""The per-thread syscalls that confined file access stands on: `openat2` and switching one
thread's file credentials to the sandbox user (fsuid/fsgid, no supplementary groups, no effective
capabilities) — all per-thread in the kernel, so other server threads keep root's. And
`resize_tmpfs`, which changes the size of an instance's tmpfs from outside its mount namespace, and
`filesystem_type` (fstatfs).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import platform
from collections.abc import Callable, Iterator, Sequence

from agentcell.errors import Internal

_SYS_OPENAT2 = 437  # one number on every architecture: it postdates the unified syscall table
_SYS_FSCONFIG, _SYS_FSPICK = 431, 433  # likewise
_FSPICK_CLOEXEC, _FSPICK_NO_AUTOMOUNT, _FSPICK_EMPTY_PATH = 0x01, 0x04, 0x08
_FSCONFIG_SET_STRING, _FSCONFIG_CMD_RECONFIGURE = 1, 7
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159}
_RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_IN_ROOT = 0x10
IN_ROOT = _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS
_EAGAIN_RETRIES = 8  # openat2 asks for a retry when a rename/mount raced a symlink's ".."
_CAPABILITY_VERSION_3 = 0x20080522


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _errno_error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), what)


def openat2(dirfd: int, path: str, flags: int, resolve: int = IN_ROOT) -> int:
    how = _OpenHow(flags=flags | os.O_CLOEXEC, mode=0, resolve=resolve)
    raw = os.fsencode(path)
    for _ in range(_EAGAIN_RETRIES):
        fd = int(
            _libc().syscall(
                ctypes.c_long(_SYS_OPENAT2),
                ctypes.c_int(dirfd),
                raw,
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
        )
        if fd >= 0:
            return fd
        if ctypes.get_errno() != errno.EAGAIN:
            break
    raise _errno_error(path)


PROC_SUPER_MAGIC = 0x9FA0
_STATFS_BYTES = 256  # more than struct statfs takes on any architecture


def filesystem_type(fd: int) -> int:
    """The `f_type` of the filesystem `fd` (O_PATH will do) is on: fstatfs(2)."""
    buf = ctypes.create_string_buffer(_STATFS_BYTES)
    if _libc().fstatfs(ctypes.c_int(fd), buf) != 0:
        raise _errno_error("fstatfs")
    return ctypes.c_long.from_buffer(buf).value  # f_type is struct statfs's first field


def resize_tmpfs(mount_root_fd: int, size_bytes: int) -> None:
    """Set the size of the tmpfs whose mount has `mount_root_fd` (any fd, O_PATH will do) as its
    root. fspick(2) takes the superblock through the fd, so the mount may be in another mount
    namespace (an instance's, reached through /proc/<pid>/root) without entering it. Shrinking
    below what the tmpfs holds fails with EINVAL, changing nothing."""
    flags = ctypes.c_uint(_FSPICK_CLOEXEC | _FSPICK_NO_AUTOMOUNT | _FSPICK_EMPTY_PATH)
    fs = int(_libc().syscall(ctypes.c_long(_SYS_FSPICK), ctypes.c_int(mount_root_fd), b"", flags))
    if fs < 0:
        raise _errno_error("fspick")
    try:
        _fsconfig(fs, _FSCONFIG_SET_STRING, b"size", str(size_bytes).encode())
        _fsconfig(fs, _FSCONFIG_CMD_RECONFIGURE, None, None)
    finally:
        os.close(fs)


def _fsconfig(fs: int, command: int, key: bytes | None, value: bytes | None) -> None:
    number, aux = ctypes.c_long(_SYS_FSCONFIG), ctypes.c_int(0)
    if _libc().syscall(number, ctypes.c_int(fs), ctypes.c_uint(command), key, value, aux) != 0:
        raise _errno_error("fsconfig")


def _set_thread_groups(groups: Sequence[int]) -> None:
    """setgroups for this thread only: glibc's wrapper would change every thread of the server."""
    number = _SYS_SETGROUPS.get(platform.machine())
    if number is None:
        raise Internal(f"dropping supplementary groups is not implemented on {platform.machine()}")
    array = (ctypes.c_uint * len(groups))(*groups) if groups else None
    if _libc().syscall(ctypes.c_long(number), ctypes.c_size_t(len(groups)), array) != 0:
        raise Internal(f"could not set a file worker's groups: {_errno_error('setgroups')}")


def _capabilities(new: ctypes.Array[_CapData] | None = None) -> ctypes.Array[_CapData]:
    """capget (or capset when `new` is given) for the calling thread."""
    header = _CapHeader(version=_CAPABILITY_VERSION_3, pid=0)
    data = new if new is not None else (_CapData * 2)()
    call = _libc().capget if new is None else _libc().capset
    if call(ctypes.byref(header), data) != 0:
        raise Internal(f"could not change a file worker's capabilities: {_errno_error('capset')}")
    return data


def _without_effective(caps: ctypes.Array[_CapData]) -> ctypes.Array[_CapData]:
    return (_CapData * 2)(*(_CapData(0, c.permitted, c.inheritable) for c in caps))


@contextlib.contextmanager
def _fs_id(setter: Callable[[int], int], wanted: int) -> Iterator[None]:
    """setfsuid/setfsgid for the duration; they report the previous id, never an error, so
    calling twice is the only way to see whether the switch took."""
    previous = int(setter(wanted))
    if int(setter(wanted)) != wanted:
        setter(previous)
        raise Internal("could not switch a file worker to the sandbox user (the server must be root)")
    try:
        yield
    finally:
        setter(previous)
        if int(setter(previous)) != previous:
            raise Internal("could not give a file worker its own identity back")


@contextlib.contextmanager
def as_sandbox_user(uid: int, gid: int) -> Iterator[None]:
    """This thread acts as uid/gid on files until exit. Effective capabilities go too, not just
    the filesystem ones a non-zero fsuid clears: CAP_SYS_PTRACE or CAP_SYSLOG would let a read of
    the sandbox's /proc/<pid>/mem or /proc/kallsyms see what the sandbox user may not."""
    groups = os.getgroups()
    caps = _capabilities()
    if groups:
        _set_thread_groups(())
    try:
        with _fs_id(_libc().setfsgid, gid), _fs_id(_libc().setfsuid, uid):
            _capabilities(_without_effective(caps))
            try:
                yield
            finally:
                _capabilities(caps)
    finally:
        if groups:
            _set_thread_groups(groups)
