"""LinuxDriver: the process-tier `SandboxDriver` (namespaces, cgroups, seccomp, overlay rootfs).

An instance is one `acell-helper` init, PID 1 of its own pid, mount, net, ipc, uts and cgroup
namespaces, inside its own cgroups; commands enter through exec workers (process.py). Both are
forked by the driver's spawner (spawner.py), never by the server itself. Per instance the node
holds the init's pidfd (liveness, signals that cannot hit a recycled pid) and a state file
`<state dir>/instances/<id>.json`, so that a restarted server finds what it left.

The server must call `become_subreaper()` once at start, before the first sandbox: an init is
orphaned as soon as its spawn worker exits, and must be re-parented to the server (not the
host's PID 1) so that `stop` can reap it; so must the workers of a spawner that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import posixpath
import re
import select
import signal
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentcell.errors import Conflict, Internal, InvalidArgument, NotFound, NotRunning, Unavailable
from agentcell.server.egress.node import EgressConfig, NodeEgress
from agentcell.server.egress.policy import NO_EGRESS, EgressPolicy
from agentcell.server.sandbox.driver import (
    SANDBOX_HOME,
    SANDBOX_PATH,
    SANDBOX_UID,
    SANDBOX_USER,
    ExecSpec,
    Mount,
    ResourceUsage,
    SandboxFiles,
    SandboxSpec,
)
from agentcell.server.sandbox.linux.build import helper_path
from agentcell.server.sandbox.linux.cgroups import CgroupLimits, CgroupPlan, Cgroups, open_cgroups
from agentcell.server.sandbox.linux.fscalls import IN_ROOT, RESOLVE_NO_SYMLINKS, openat2, resize_tmpfs
from agentcell.server.sandbox.linux.init_channel import InitChannel
from agentcell.server.sandbox.linux.netns import NetnsSockets
from agentcell.server.sandbox.linux.process import (
    ControlPipe,
    LinuxProcess,
    Target,
    reap_if_child,
    start_process,
    wait_readable,
)
from agentcell.server.sandbox.linux.rootfs import RootfsPaths, prepare_rootfs, remove_stale_skeletons
from agentcell.server.sandbox.linux.spawner import Spawner, settle_unreported_workers

log = logging.getLogger(__name__)

SANDBOX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
BASE_ENV = {
    "PATH": SANDBOX_PATH,
    "HOME": SANDBOX_HOME,
    "USER": SANDBOX_USER,
    "LOGNAME": SANDBOX_USER,
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
    # Run-time dependencies land in the workspace: `pip install x` goes to ~/.local (the system's
    # site-packages are not writable, so pip picks --user; PEP 668 is waived for that), and
    # `npm install -g x` to ~/.local/lib/node_modules (a plain `npm install x`: ./node_modules).
    "PIP_BREAK_SYSTEM_PACKAGES": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "npm_config_prefix": f"{SANDBOX_HOME}/.local",
    "npm_config_update_notifier": "false",
    "npm_config_fund": "false",
    "npm_config_audit": "false",
}
MIN_MEMORY_BYTES = 16 << 20
MIN_DISK_BYTES = 1 << 20
MIN_PIDS = 8  # init, the exec helper and a shell pipeline
POLL_S = 0.005
ORPHAN_SWEEP_S = 0.1
"""while a killed init has not exited, zombies orphaned to us are looked for this often"""
SETTLE_S = 1.0
"""how long killed processes and helpers get to leave the cgroup before SIGKILL rounds"""
KILL_TIMEOUT_S = 10.0
SPAWN_TIMEOUT_S = 30.0
INSTANCES_DIR = "instances"  # under the state dir: one state file per instance
FREEZE_TIMEOUT_S = 5.0
"""how long `freeze` waits for every process to stop (one in uninterruptible sleep delays it)"""
RESERVED_MOUNT_TARGETS = (
    "/usr",
    "/etc",
    "/proc",
    "/dev",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
)
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make this process the reaper of orphaned descendants (call once at server start)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise Unavailable(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")


UNLIMITED_COUNT = (1 << 31) - 1
"""far beyond what any memory limit lets one sandbox allocate of these kernel objects"""
PER_UID = "counted per uid, and every sandbox runs as uid 1000: one sandbox took all of it from the others"
HOST_WIDE = "counted for the whole host, root included: one sandbox took all of it"


@dataclass(frozen=True, slots=True)
class HostLimit:
    """A host sysctl (path under /proc/sys) that sandboxes would otherwise share."""

    name: str
    wanted: int
    """0 where 0 means no limit"""
    why: str

    def needs_raising(self, current: int) -> bool:
        return current != 0 if self.wanted == 0 else current < self.wanted


SHARED_HOST_LIMITS = (
    HostLimit("fs/inotify/max_user_instances", UNLIMITED_COUNT, f"{PER_UID} (default 128)"),
    HostLimit("fs/inotify/max_user_watches", UNLIMITED_COUNT, PER_UID),
    HostLimit("fs/epoll/max_user_watches", UNLIMITED_COUNT, PER_UID),
    HostLimit("fs/pipe-user-pages-soft", 0, f"{PER_UID} (past it every new pipe holds 8 KiB)"),
    HostLimit("fs/pipe-user-pages-hard", 0, PER_UID),
    HostLimit("fs/aio-max-nr", UNLIMITED_COUNT, f"{HOST_WIDE} (io_setup, default 65536 events)"),
    HostLimit("fs/file-max", UNLIMITED_COUNT, f"{HOST_WIDE} (systemd sets the maximum too)"),
    HostLimit("kernel/pty/max", 1 << 20, "shared by every sandbox's devpts (each holds at most 64)"),
    HostLimit("kernel/pid_max", 1 << 22, "shared by every sandbox's processes (each at most its pids.max)"),
)
"""Each caps kernel objects that the memory cgroup of whoever allocates them is charged for (or,
for ptys and pids, that each sandbox's own limit bounds): lifted, a sandbox is bounded by its own
cgroup, not by what the other sandboxes left."""
MEMCG_CHARGES_SINCE = (5, 14)
"""the kernel that charges the last of those objects to the allocator's memory cgroup"""


def raise_shared_host_limits(proc_sys: Path = Path("/proc/sys"), release: str | None = None) -> None:
    """Lift, at start, the kernel's counts that every sandbox would share (SHARED_HOST_LIMITS):
    inotify instances and watches, epoll watches and pipe pages per uid; AIO contexts, open files,
    ptys and pids for the whole host. Only ever raised, each with a log line; a host that keeps
    /proc/sys read-only (some containers) or runs an older kernel keeps the shared counts."""
    if _kernel_version(release or os.uname().release) < MEMCG_CHARGES_SINCE:
        log.warning("kernel before 5.14: sandboxes share the per-uid limits (inotify, pipe pages...)")
        return
    for limit in SHARED_HOST_LIMITS:
        sysctl = limit.name.replace("/", ".")
        try:
            current = int((proc_sys / limit.name).read_text())
            if not limit.needs_raising(current):
                continue
            (proc_sys / limit.name).write_text(str(limit.wanted))
        except (OSError, ValueError) as e:
            log.warning("cannot raise host sysctl %s (%s): sandboxes share it", sysctl, e)
            continue
        log.info("raised host sysctl %s from %d to %d: %s", sysctl, current, limit.wanted, limit.why)


def _kernel_version(release: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def tmpfs_bytes(disk_bytes: int, memory_bytes: int) -> int:
    """The size of an instance's tmpfs (its root, and so its workspace): its disk, but never more
    than its memory. Pages the instance writes are charged to its memory cgroup, but those the
    server writes into it (files API, workspace restores) are charged to the server's, from
    the server's threads: only the tmpfs size bounds what they pin of the host's RAM, and capped
    at the memory limit it is no more than the tenant's memory quota already counts. (From inside,
    a file larger than the memory limit could never be written anyway: that write is OOM-killed.)"""
    return min(disk_bytes, memory_bytes)


def node_id_for(state_dir: Path) -> str:
    """Two servers on one host need two state dirs, and so never reap each other's instances."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class _Host:
    spawner: Spawner
    rootfs: RootfsPaths
    cgroups: Cgroups
    pidns_inode: int
    """the server's own pid namespace: processes outside it belong to a sandbox"""


@dataclass(slots=True)
class _Instance:
    sandbox_id: str
    pidfd: int
    target: Target
    hostname: str
    env: dict[str, str]
    egress: EgressPolicy = NO_EGRESS
    disk_bytes: int | None = None
    """the spec's (its tmpfs is smaller if the memory limit is); None: adopted from an old record"""
    processes: weakref.WeakSet[LinuxProcess] = field(default_factory=weakref.WeakSet)
    exited: asyncio.Future[None] | None = None
    files: SandboxFiles | None = None

    @property
    def init_pid(self) -> int:
        return self.target.init_pid

    def helper_pids(self) -> set[int]:
        return {p.helper_pid for p in self.processes if p.helper_running}

    def is_alive(self) -> bool:
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)


class LinuxDriver:
    """Starts, enters and stops process-tier instances on this host; needs root."""

    def __init__(
        self, state_dir: Path, *, close_grace_s: float = 2.0, egress: EgressConfig | None = None
    ) -> None:
        self._state_dir = Path(os.path.abspath(state_dir))
        self.node_id = node_id_for(self._state_dir)
        self._close_grace_s = close_grace_s
        self._host: _Host | None = None
        self._setup_lock = asyncio.Lock()
        self._instances: dict[str, _Instance] = {}
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._released: set[str] = set()
        """instances let go by `release`: left running when this driver closes"""
        self._netns = NetnsSockets()
        self._egress = NodeEgress(egress or EgressConfig())

    # ------------------------------------------------------------------ lifecycle

    async def start(self, spec: SandboxSpec) -> None:
        sandbox_id = _check_spec(spec)
        host = await self._ready()
        if self._is_known(sandbox_id):
            raise Conflict(f"sandbox {sandbox_id} is already running on this node")
        limits = CgroupLimits(spec.memory_bytes, spec.cpu_millis, spec.pids_max)
        try:
            instance = await self._spawn(host, spec, host.cgroups.plan(sandbox_id, limits))
        except Conflict:
            raise  # the cgroups are another start's: the worker made none
        except BaseException:
            await asyncio.shield(self._teardown(host, sandbox_id, pidfd=None))
            raise
        self._instances[sandbox_id] = instance
        log.debug("sandbox %s started, init pid %d", sandbox_id, instance.init_pid)

    async def stop(self, sandbox_id: str, grace_s: float = 2.0) -> None:
        if not SANDBOX_ID.fullmatch(sandbox_id):
            return  # it cannot have been started, and it must not become a path
        task = self._stopping.get(sandbox_id)
        if task is None:
            task = asyncio.create_task(self._stop(sandbox_id, grace_s))
            self._stopping[sandbox_id] = task
            task.add_done_callback(lambda _: self._stopping.pop(sandbox_id, None))
        # Shielded: a cancelled caller must not leave half-removed cgroups behind.
        await asyncio.shield(task)

    async def adopt(self, sandbox_id: str) -> bool:
        host = await self._ready()
        if sandbox_id in self._instances:
            return True
        if not SANDBOX_ID.fullmatch(sandbox_id) or sandbox_id in self._stopping:
            return False
        record = self._read_state(sandbox_id)
        pidfd = _open_recorded_init(record) if record else None
        if record is None or pidfd is None:
            await self.stop(sandbox_id, grace_s=0)  # whatever is left of it (cgroups...) goes
            return False
        try:
            instance = self._make_instance(host, sandbox_id, pidfd, record["hostname"], record["env"])
            instance.egress = EgressPolicy.from_record(record.get("egress"))
            instance.disk_bytes = _optional_int(record.get("disk_bytes"))
        except (OSError, KeyError, TypeError, ValueError):
            os.close(pidfd)
            await self.stop(sandbox_id, grace_s=0)
            return False
        self._instances[sandbox_id] = instance
        self._released.discard(sandbox_id)
        self._thaw(host, sandbox_id)  # an earlier server may have died with it frozen for a snapshot
        await self._reattach_egress(instance)
        log.info("sandbox %s adopted, init pid %d", sandbox_id, instance.init_pid)
        return True

    async def release(self, sandbox_id: str) -> None:
        instance = self._instances.get(sandbox_id)
        if instance is None:
            return
        await self._egress.detach(sandbox_id)  # its listener dies with this server: adopt reopens it
        self._forget(instance)
        os.close(instance.pidfd)
        self._released.add(sandbox_id)
        log.info("sandbox %s released: it keeps running for the next server to adopt", sandbox_id)

    async def reap_orphans(self) -> list[str]:
        host = await self._ready()
        found = set(host.cgroups.list_ids()) | {p.stem for p in self._instances_dir().glob("*.json")}
        orphans = sorted(found - set(self._instances) - set(self._stopping) - self._released)
        for sandbox_id in orphans:
            log.warning("reaping orphaned sandbox %s", sandbox_id)
            await self.stop(sandbox_id, grace_s=0)
        for leftover in self._instances_dir().glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        remove_stale_skeletons(self._state_dir, keep=host.rootfs.etc_skel)
        return orphans

    async def aclose(self) -> None:
        ids = list(self._instances)
        results = await asyncio.gather(
            *(self.stop(i, self._close_grace_s) for i in ids),
            *self._stopping.values(),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if self._host is not None:
            await self._host.spawner.aclose()
            await settle_unreported_workers()
            await self._sweep_half_made(self._host)
            if not self._instances and not self._released:
                self._host.cgroups.remove_root()
        await self._egress.aclose()
        self._netns.close()
        if errors:
            raise errors[0]

    async def _sweep_half_made(self, host: _Host) -> None:
        """Remove what a start cut short by a lost spawner may have left: a worker forked in the
        instant before the spawner died was never reported, and may have made cgroups or a
        state file after the failed start had cleaned up."""
        for sandbox_id in set(host.cgroups.list_ids()) - set(self._instances) - self._released:
            host.cgroups.kill_all(sandbox_id)
            await _wait_until(lambda: host.cgroups.remove(sandbox_id), KILL_TIMEOUT_S)  # noqa: B023
            self._remove_state(sandbox_id)  # its worker made it, empty
        for leftover in self._instances_dir().glob(".*.tmp"):  # state files of older versions
            leftover.unlink(missing_ok=True)

    # ------------------------------------------------------------------ using an instance

    async def exec(self, sandbox_id: str, spec: ExecSpec) -> LinuxProcess:
        instance = self._get(sandbox_id)
        if not instance.is_alive():
            raise NotRunning(f"sandbox {sandbox_id} is not running (its init has exited)")
        env = {**BASE_ENV, "HOSTNAME": instance.hostname, **instance.env, **spec.env}
        cwd = os.path.join(SANDBOX_HOME, spec.cwd)  # a relative cwd is relative to the home dir
        process = await start_process(
            instance.target, spec.argv, cwd, env, spec.terminal, stdio=spec.stdio, sandbox_id=sandbox_id
        )
        instance.processes.add(process)
        return process

    def files(self, sandbox_id: str) -> SandboxFiles:
        instance = self._get(sandbox_id)
        if instance.files is None:
            # Imported here: the module is heavier than the driver and only needed on demand.
            from agentcell.server.sandbox.linux.files import RootedFiles

            instance.files = RootedFiles(f"/proc/{instance.init_pid}/root", uid=SANDBOX_UID, gid=SANDBOX_UID)
        return instance.files

    async def usage(self, sandbox_id: str) -> ResourceUsage:
        self._get(sandbox_id)
        assert self._host is not None
        return self._host.cgroups.usage(sandbox_id)

    async def set_limits(self, sandbox_id: str, cpu_millis: int, memory_bytes: int, pids_max: int) -> None:
        """New cgroup limits, and the tmpfs resized to match the new memory limit (first: a tmpfs
        that holds more than the new size refuses, and then nothing has changed)."""
        instance = self._get(sandbox_id)
        assert self._host is not None
        limits = SandboxSpec(sandbox_id, cpu_millis=cpu_millis, memory_bytes=memory_bytes, pids_max=pids_max)
        _check_spec(limits)
        disk_bytes = memory_bytes if instance.disk_bytes is None else instance.disk_bytes
        self._resize_root(instance, tmpfs_bytes(disk_bytes, memory_bytes))
        self._host.cgroups.set_limits(sandbox_id, CgroupLimits(memory_bytes, cpu_millis, pids_max))

    async def set_egress(self, sandbox_id: str, egress: EgressPolicy) -> None:
        """The new policy replaces the old at once: the proxy's connections made under the old one
        are closed with its listener, and a listener opens again if the new one has a proxy.
        Commands started from now on get its proxy environment; running ones keep what they had
        (with the proxy gone, theirs leads nowhere)."""
        instance = self._get(sandbox_id)
        old_egress, old_env = instance.egress, instance.env
        proxy_env = self._egress.env(old_egress)
        given = {k: v for k, v in old_env.items() if proxy_env.get(k) != v}  # (the user's own)
        await self._egress.detach(sandbox_id)
        instance.egress, instance.env = egress, {**self._egress.env(egress), **given}
        try:
            await self._attach_egress(instance)
        except Exception:
            instance.egress, instance.env = old_egress, old_env  # the old policy stays, as its record says
            await self._reattach_egress(instance)
            raise
        # (so that a restarted server's adopt serves the new policy)
        self._rewrite_state(sandbox_id, {"env": instance.env, "egress": egress.to_record()})

    def _resize_root(self, instance: _Instance, size_bytes: int) -> None:
        fd = os.open(f"/proc/{instance.init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if not instance.is_alive():  # the pid may have been recycled before the open
                raise NotRunning(f"sandbox {instance.sandbox_id} is not running (its init has exited)")
            resize_tmpfs(fd, size_bytes)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise Internal(f"cannot resize the disk of sandbox {instance.sandbox_id}: {e}") from e
            raise Conflict(
                f"sandbox {instance.sandbox_id} holds more files than {size_bytes} bytes, the disk "
                "its new memory limit allows"
            ) from e
        finally:
            os.close(fd)

    async def freeze(self, sandbox_id: str) -> bool:
        self._get(sandbox_id)
        host = await self._ready()
        if not host.cgroups.can_freeze:
            return False
        host.cgroups.freeze(sandbox_id)
        if await _wait_until(lambda: host.cgroups.is_frozen(sandbox_id), FREEZE_TIMEOUT_S):
            return True
        self._thaw(host, sandbox_id)
        raise Unavailable(
            f"sandbox {sandbox_id} could not be frozen within {FREEZE_TIMEOUT_S:g} s (a process in "
            "uninterruptible sleep?); retry"
        )

    async def thaw(self, sandbox_id: str) -> None:
        self._thaw(await self._ready(), sandbox_id)

    @staticmethod
    def _is_frozen(host: _Host, sandbox_id: str) -> bool:
        try:
            return host.cgroups.is_frozen(sandbox_id)
        except FileNotFoundError:  # gone, or never made
            return False

    @staticmethod
    def _thaw(host: _Host, sandbox_id: str) -> None:
        if host.cgroups.can_freeze:
            with contextlib.suppress(FileNotFoundError):  # gone: nothing left to thaw
                host.cgroups.thaw(sandbox_id)

    async def mount_tmpfs(self, sandbox_id: str, path: str, size_bytes: int) -> None:
        """A tmpfs of its own at `path`, never larger than the instance's root tmpfs (and so than
        its memory limit: see tmpfs_bytes)."""
        root = os.statvfs(f"/proc/{self._get(sandbox_id).init_pid}/root")
        size_bytes = min(size_bytes, root.f_blocks * root.f_frsize)
        options = f"size={size_bytes},uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700,nosuid,nodev"
        mount = ["mount", "--no-canonicalize", "-t", "tmpfs", "-o", options, "tmpfs"]
        await self._at_dir(sandbox_id, path, mount)

    async def unmount(self, sandbox_id: str, path: str) -> None:
        with contextlib.suppress(Unavailable, Conflict):
            await self._at_dir(sandbox_id, path, ["umount", "--lazy", "--no-canonicalize"])

    async def _at_dir(self, sandbox_id: str, path: str, argv: list[str]) -> None:
        """`argv` + the directory at `path` of the instance, given as /proc/self/fd/N of an fd
        opened here without following any symlink: the path's parents belong to the sandbox user,
        who could swap one for a link (to /usr/local, say: root would mount a tmpfs the user owns
        there, and then run the user's `umount` from it). Raises Conflict when `path` is reached
        only through a symlink."""
        root_path = f"/proc/{self._get(sandbox_id).init_pid}/root"
        root = os.open(root_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = openat2(root, path, os.O_PATH | os.O_DIRECTORY, IN_ROOT | RESOLVE_NO_SYMLINKS)
        except OSError as exc:
            raise Conflict(f"{path} in sandbox {sandbox_id}: not a directory reached without links") from exc
        finally:
            os.close(root)
        try:
            await self._in_mount_ns(sandbox_id, [*argv, f"/proc/self/fd/{fd}"], fd)
        finally:
            os.close(fd)

    async def _in_mount_ns(self, sandbox_id: str, argv: list[str], fd: int) -> None:
        """Run a host tool in the instance's mount and pid namespaces and under its root, with
        `fd` open (its /proc/self/fd/N, in the instance's /proc, is the directory it names)."""
        instance = self._get(sandbox_id)
        enter = ["nsenter", f"--target={instance.init_pid}", "--mount", "--pid", "--root", "--wd", "--"]
        proc = await asyncio.create_subprocess_exec(
            *enter,
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(fd,),
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},  # the tool is found in the instance's root
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise Unavailable(
                f"{argv[0]} in sandbox {sandbox_id} failed: {err.decode(errors='replace').strip()}"
            )

    async def connect(self, sandbox_id: str, port: int) -> socket.socket:
        instance = self._get(sandbox_id)
        if not 0 < port < 65536:
            raise InvalidArgument(f"port must be between 1 and 65535, got {port}")
        return await self._netns.connect(instance.pidfd, port)

    async def wait_exited(self, sandbox_id: str) -> None:
        instance = self._get(sandbox_id)
        await asyncio.shield(self._exit_future(instance))

    def init_pid(self, sandbox_id: str) -> int:
        """The host pid of the instance's init (diagnostics and tests)."""
        return self._get(sandbox_id).init_pid

    def spawner_pid(self) -> int | None:
        """The host pid of the spawner, if one runs (diagnostics and tests)."""
        return None if self._host is None else self._host.spawner.pid

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    @property
    def egress(self) -> NodeEgress:
        """The node's egress proxy and package mirrors (diagnostics and tests)."""
        return self._egress

    # ------------------------------------------------------------------ internals: start

    async def _ready(self) -> _Host:
        if self._host is None:
            async with self._setup_lock:
                if self._host is None:
                    self._host = await asyncio.to_thread(self._prepare_host)
        return self._host

    def _prepare_host(self) -> _Host:
        if os.geteuid() != 0:
            raise Unavailable("the process-tier sandbox driver must run as root")
        try:
            return self._prepare_host_as_root()
        except OSError as e:
            raise Unavailable(f"cannot prepare the sandbox state dir {self._state_dir}: {e}") from e

    def _prepare_host_as_root(self) -> _Host:
        raise_shared_host_limits()
        self._state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._instances_dir().mkdir(mode=0o700, exist_ok=True)
        return _Host(
            spawner=Spawner(helper_path(self._state_dir)),
            rootfs=prepare_rootfs(self._state_dir),
            cgroups=open_cgroups(self.node_id),
            pidns_inode=os.stat("/proc/self/ns/pid").st_ino,
        )

    async def _spawn(self, host: _Host, spec: SandboxSpec, cgroups: CgroupPlan) -> _Instance:
        hostname = _hostname(spec.sandbox_id)
        args = [*cgroups.helper_args(), "--disk-bytes", str(tmpfs_bytes(spec.disk_bytes, spec.memory_bytes))]
        args += ["--etc-skel", str(host.rootfs.etc_skel), "--root-mnt", str(host.rootfs.root_mnt)]
        args += ["--hostname", hostname, "--state-file", self._state_file(spec.sandbox_id)]
        args += _bind_args(spec.mounts)
        ours, theirs = InitChannel.pair()
        try:
            init = await _run_spawn_worker(host.spawner, spec.sandbox_id, args, theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        channel = InitChannel(ours)
        pidfd = os.pidfd_open(init.pid)  # safe: an orphaned init is our child until we reap it
        env = {**self._egress.env(spec.egress), **spec.env}
        try:
            instance = self._make_instance(host, spec.sandbox_id, pidfd, hostname, env, init, channel)
            instance.egress, instance.disk_bytes = spec.egress, spec.disk_bytes
            await self._attach_egress(instance)
            self._write_state(instance, init.start_ticks)
        except BaseException:
            channel.close()
            os.close(pidfd)
            raise
        return instance

    def _make_instance(
        self,
        host: _Host,
        sandbox_id: str,
        pidfd: int,
        hostname: str,
        env: dict[str, str],
        init: _Init | None = None,
        channel: InitChannel | None = None,
    ) -> _Instance:
        """For a start, `init` is what the spawn worker reported and `channel` the init's command
        socket; adopt() reads /proc instead, and has no channel."""
        init_pid = _pid_of(pidfd) if init is None else init.pid
        target = Target(host.spawner, init_pid, pidfd, host.cgroups.procs_files(sandbox_id), channel)
        return _Instance(sandbox_id, pidfd, target, hostname, env)

    async def _attach_egress(self, instance: _Instance) -> None:
        """Open the sandbox's proxy listener (127.0.0.1:<proxy port> in its network namespace)."""
        if not instance.egress.has_proxy:
            return
        port = self._egress.config.proxy_port
        try:
            listener = await self._netns.listen(instance.pidfd, port)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:  # (only a process of the sandbox's own can hold it)
                raise Conflict(
                    f"a process in sandbox {instance.sandbox_id} listens on 127.0.0.1:{port}, the port of "
                    "its egress proxy: stop it, then set the network policy again"
                ) from e
            raise Internal(f"cannot open the egress proxy of sandbox {instance.sandbox_id}: {e}") from e
        await self._egress.attach(instance.sandbox_id, instance.egress, listener)

    async def _reattach_egress(self, instance: _Instance) -> None:
        """After a restart (the old server's listener died with it), or a new policy's failed
        attach. Failing here fails closed (the sandbox keeps running with no way out), so it is
        logged, not raised."""
        try:
            await self._attach_egress(instance)
        except Exception as e:
            log.error("sandbox %s: egress proxy not restored, no network: %s", instance.sandbox_id, e)

    # ------------------------------------------------------------------ internals: stop

    async def _stop(self, sandbox_id: str, grace_s: float) -> None:
        host = await self._ready()
        if self._is_frozen(host, sandbox_id):
            # Frozen for a snapshot that was taken: nothing it does from now on is kept, so it gets
            # no grace to run past the snapshot. SIGKILL while frozen, then thaw: it dies on waking.
            host.cgroups.kill_all(sandbox_id)
            grace_s = 0.0
        self._thaw(host, sandbox_id)  # frozen processes would sleep through SIGTERM and SIGKILL (v1)
        self._released.discard(sandbox_id)
        instance = self._instances.get(sandbox_id)
        if instance is None:
            record = self._read_state(sandbox_id)
            await self._teardown(host, sandbox_id, pidfd=_open_recorded_init(record) if record else None)
            return
        try:
            await self._terminate(host, instance, grace_s)
        finally:
            self._forget(instance)
            await self._teardown(host, sandbox_id, pidfd=instance.pidfd)
        log.debug("sandbox %s stopped", sandbox_id)

    async def _terminate(self, host: _Host, instance: _Instance, grace_s: float) -> None:
        """SIGTERM (the init passes it to every process), grace, SIGKILL the init: the kernel then
        kills the whole pid namespace. Exec helpers leave on their own once their command is gone."""
        sandbox_id, cgroups = instance.sandbox_id, host.cgroups
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(instance.pidfd, signal.SIGTERM)
        allowed = {instance.init_pid} | instance.helper_pids()
        channel = instance.target.channel

        def settled() -> bool:
            # Gone from the cgroup is not enough: the init must also have said how each of its
            # commands ended, or its SIGKILL loses that (a command that exited 7 on SIGTERM was
            # reported killed, under load).
            reported = channel is None or channel.closed or not channel.unreported
            return reported and set(cgroups.pids(sandbox_id)) <= allowed

        await _wait_until(settled, grace_s)
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(instance.pidfd, signal.SIGKILL)
        await _wait_for_init(asyncio.shield(self._exit_future(instance)), SETTLE_S)
        await _wait_until(lambda: not cgroups.pids(sandbox_id), SETTLE_S)

    async def _teardown(self, host: _Host, sandbox_id: str, pidfd: int | None) -> None:
        """Kill whatever is left in the cgroups, reap what was re-parented to us, remove the
        cgroups and the state file. Safe on a half-started or already-gone instance. Takes
        ownership of pidfd (the init's, if known)."""
        await self._egress.detach(sandbox_id)
        try:
            if pidfd is not None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            await self._kill_and_reap(host, sandbox_id)
            if pidfd is not None:
                await self._reap_init(pidfd)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if not await _wait_until(lambda: host.cgroups.remove(sandbox_id), KILL_TIMEOUT_S):
            raise Internal(f"the cgroups of sandbox {sandbox_id} could not be removed")
        self._remove_state(sandbox_id)

    async def _kill_and_reap(self, host: _Host, sandbox_id: str) -> None:
        strays: dict[int, int] = {}  # pid -> pidfd, for sandbox processes that may be our children
        try:
            deadline = time.monotonic() + KILL_TIMEOUT_S
            while pids := host.cgroups.pids(sandbox_id):
                for pid in pids:
                    if pid not in strays and (fd := _sandbox_pidfd(pid, host.pidns_inode)) is not None:
                        strays[pid] = fd
                host.cgroups.kill_all(sandbox_id)
                if time.monotonic() > deadline:
                    raise Internal(f"sandbox {sandbox_id} still has processes after SIGKILL: {pids[:10]}")
                await asyncio.sleep(POLL_S)
            await _wait_until(lambda: _reap_children(strays), KILL_TIMEOUT_S)
        finally:
            for fd in strays.values():
                os.close(fd)

    async def _reap_init(self, pidfd: int) -> None:
        """Wait for the init to die and reap it if it is our child (ECHILD if it is not)."""
        await _wait_for_init(wait_readable(pidfd), KILL_TIMEOUT_S)
        reap_if_child(pidfd)

    def _forget(self, instance: _Instance) -> None:
        """Drop the instance from the table and wake its wait_exited() callers."""
        asyncio.get_running_loop().remove_reader(instance.pidfd)
        if instance.target.channel is not None:
            instance.target.channel.close()
        if instance.exited is not None and not instance.exited.done():
            instance.exited.set_result(None)
        self._instances.pop(instance.sandbox_id, None)

    # ------------------------------------------------------------------ internals: records

    def _is_known(self, sandbox_id: str) -> bool:
        """Running or stopping here. An instance this node does not track (an orphan not yet
        reaped) still holds its cgroups, so its id's spawn worker answers `conflict`; no stat of
        its state file here: under a burst of starts, a lookup in the instances directory waited
        on the workers' file creations there (~0.5 ms each) on the event loop's thread."""
        return sandbox_id in self._instances or sandbox_id in self._stopping

    def _get(self, sandbox_id: str) -> _Instance:
        instance = self._instances.get(sandbox_id)
        if instance is None:
            raise NotFound(f"sandbox {sandbox_id} is not running on this node")
        return instance

    def _exit_future(self, instance: _Instance) -> asyncio.Future[None]:
        if instance.exited is None:
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[None] = loop.create_future()

            def on_exit() -> None:
                loop.remove_reader(instance.pidfd)
                if not exited.done():
                    exited.set_result(None)

            loop.add_reader(instance.pidfd, on_exit)
            instance.exited = exited
        return instance.exited

    def _instances_dir(self) -> Path:
        return self._state_dir / INSTANCES_DIR

    def _state_file(self, sandbox_id: str) -> str:
        return f"{self._state_dir}/{INSTANCES_DIR}/{sandbox_id}.json"  # a str: on every start and stop

    def _remove_state(self, sandbox_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._state_file(sandbox_id))

    def _write_state(self, instance: _Instance, init_start_ticks: int) -> None:
        """Mode 0600: the env may hold the user's secrets. The spawn worker has made the file,
        empty (allocating an inode is the slow part on a busy ext4, and so is a rename: both
        take the directory's lock, for which the event loop's thread waited on the workers'
        creations under a burst). Written in place: a server that dies before the record is
        whole leaves an instance whose record does not parse, which the next server reaps
        rather than adopts, as it would one whose start never finished."""
        record = {
            "sandbox_id": instance.sandbox_id,
            "init_pid": instance.init_pid,
            "init_start_ticks": init_start_ticks,
            "hostname": instance.hostname,
            "env": instance.env,
            "egress": instance.egress.to_record(),
            "disk_bytes": instance.disk_bytes,
        }
        # No O_TRUNC: the worker's file is empty, and truncating to 0 makes ext4 flush it on close.
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self._state_file(instance.sandbox_id), flags, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(record).encode())

    def _rewrite_state(self, sandbox_id: str, fields: dict[str, Any]) -> None:
        """Change some fields of a written record (none when it cannot be read)."""
        record = self._read_state(sandbox_id)
        if record is None:
            return
        flags = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        with os.fdopen(os.open(self._state_file(sandbox_id), flags), "wb") as f:
            f.write(json.dumps(record | fields).encode())

    def _read_state(self, sandbox_id: str) -> dict[str, Any] | None:
        try:
            with open(self._state_file(sandbox_id), "rb") as f:
                record = json.loads(f.read())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None


def _check_spec(spec: SandboxSpec) -> str:
    if not SANDBOX_ID.fullmatch(spec.sandbox_id):
        raise InvalidArgument(
            f"sandbox ids are 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit; "
            f"got {spec.sandbox_id!r}"
        )
    if spec.memory_bytes < MIN_MEMORY_BYTES:
        raise InvalidArgument(f"memory_bytes must be at least {MIN_MEMORY_BYTES}, got {spec.memory_bytes}")
    if spec.disk_bytes < MIN_DISK_BYTES:
        raise InvalidArgument(f"disk_bytes must be at least {MIN_DISK_BYTES}, got {spec.disk_bytes}")
    if spec.pids_max < MIN_PIDS:
        raise InvalidArgument(f"pids_max must be at least {MIN_PIDS}, got {spec.pids_max}")
    if spec.cpu_millis < 10:
        raise InvalidArgument(f"cpu_millis must be at least 10, got {spec.cpu_millis}")
    # A template other than base arrives resolved by the scheduler: its layer in `mounts` (read-only
    # at /opt/template) and its PATH/PYTHONPATH/NODE_PATH in `env`; the driver needs nothing else.
    return spec.sandbox_id


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int):
        raise TypeError(f"expected an int, got {value!r}")
    return value


def _hostname(sandbox_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9-]+", "-", sandbox_id).strip("-")[:63].strip("-")
    return name or "sandbox"


@dataclass(frozen=True, slots=True)
class _Init:
    """An instance's init as the node records it."""

    pid: int
    start_ticks: int
    """field 22 of /proc/<pid>/stat: with the pid, it names one process for good"""


async def _run_spawn_worker(spawner: Spawner, sandbox_id: str, args: list[str], init_sock: int) -> _Init:
    """Start the instance's init through a spawn worker, with init_sock as its end of the command
    socket; return it once it is ready."""
    ctl_read, ctl_write = os.pipe2(os.O_CLOEXEC)
    control = ControlPipe(ctl_read)
    try:
        try:
            worker = await spawner.run("spawn", args, (ctl_write, init_sock))
        finally:
            os.close(ctl_write)
        try:
            line = await asyncio.wait_for(control.readline(), SPAWN_TIMEOUT_S)
        except BaseException:
            worker.kill()  # its init, not yet ready, dies with it (parent-death signal)
            raise
    finally:
        control.close()
    fields = line.split()
    if len(fields) == 2 and all(f.isdigit() for f in fields):
        return _Init(int(fields[0]), int(fields[1]))
    if line.startswith("conflict "):
        raise Conflict(f"sandbox {sandbox_id} already has cgroups on this node")
    detail = line.removeprefix("error ").strip() or f"the spawn worker exited with {await worker.wait()}"
    raise _spawn_error(sandbox_id, detail)


def _spawn_error(sandbox_id: str, detail: str) -> Exception:
    message = f"sandbox {sandbox_id} could not start: {detail or 'the helper failed without a reason'}"
    # Namespaces and mounts failing is the host refusing us (a container without privileges,
    # no overlayfs...), not a bug in a request.
    if any(word in detail for word in ("clone", "mount", "pivot_root", "Operation not permitted")):
        return Unavailable(message)
    return Internal(message)


def _bind_args(mounts: tuple[Mount, ...]) -> list[str]:
    args: list[str] = []
    for mount in mounts:
        target = mount.target
        if not target.startswith("/") or posixpath.normpath(target) != target or target == "/":
            raise InvalidArgument(f"a mount target must be a normalized absolute path, got {target!r}")
        if any(target == r or target.startswith(r + "/") for r in RESERVED_MOUNT_TARGETS):
            raise InvalidArgument(f"cannot mount over the system directory {target}")
        if not os.path.isabs(mount.host_path) or not os.path.exists(mount.host_path):
            raise InvalidArgument(f"mount source {mount.host_path!r} is not an existing absolute path")
        args += ["--bind-ro" if mount.read_only else "--bind", mount.host_path, target]
    return args


def _open_recorded_init(record: dict[str, Any]) -> int | None:
    """A pidfd for the init a state file names, if that very process still runs."""
    try:
        pid, start = int(record["init_pid"]), int(record["init_start_ticks"])
    except (KeyError, TypeError, ValueError):
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if _start_ticks(pid) != start:  # the pid now belongs to someone else
        os.close(pidfd)
        return None
    return pidfd


def _pid_of(pidfd: int) -> int:
    """The pid a pidfd refers to (the Pid: line of its fdinfo)."""
    for line in Path(f"/proc/self/fdinfo/{pidfd}").read_text().splitlines():
        if line.startswith("Pid:"):
            return int(line.split()[1])
    raise Internal("the kernel did not report the pid of a pidfd")


def _start_ticks(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat: with the pid, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[19])


def _sandbox_pidfd(pid: int, host_pidns_inode: int) -> int | None:
    """A pidfd for pid if it lives in a sandbox's pid namespace (not one of our helpers)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    try:
        inside = os.stat(f"/proc/{pid}/ns/pid").st_ino != host_pidns_inode
        signal.pidfd_send_signal(fd, 0)  # still alive: the stat above was about this very process
    except (OSError, ProcessLookupError):
        inside = False
    if not inside:
        os.close(fd)
        return None
    return fd


async def _wait_for_init(exited: Awaitable[None], timeout_s: float) -> None:
    """Wait up to `timeout_s` for a killed init to exit (woken by its pidfd, not by polling).

    A dying init waits in the kernel until every process of its pid namespace is reaped. A command
    whose helper died first (SIGKILLed from outside) was re-parented to us, the subreaper, and
    only we can reap it: so while the init has not exited, such zombies are reaped every
    ORPHAN_SWEEP_S."""
    waiting = asyncio.ensure_future(exited)
    deadline = time.monotonic() + timeout_s
    try:
        while not waiting.done():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.wait([waiting], timeout=min(left, ORPHAN_SWEEP_S))
            if not waiting.done():
                reap_orphaned_commands()
    finally:
        waiting.cancel()


def reap_orphaned_commands() -> int:
    """Reap our zombie children that lived in a sandbox's pid namespace without being its init:
    commands re-parented to us after their helper died. Returns how many were reaped."""
    reaped = 0
    for pid in _our_children():
        if _is_orphaned_command(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
                reaped += 1
    return reaped


def _our_children() -> set[int]:
    """This process's children, zombies included (every thread's `children` list)."""
    found: set[int] = set()
    for task in os.scandir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"{task.path}/children") as children:
            found.update(int(pid) for pid in children.read().split())
    return found


def _is_orphaned_command(pid: int) -> bool:
    """An exited process of a sandbox's pid namespace that is not its init."""
    try:
        with open(f"/proc/{pid}/status") as status_file:
            status = dict(line.split(":\t", 1) for line in status_file.read().splitlines() if ":\t" in line)
    except OSError:
        return False
    ns_pids = status.get("NSpid", "").split()
    return status.get("State", "").startswith("Z") and len(ns_pids) > 1 and ns_pids[-1] != "1"


def _reap_children(pidfds: dict[int, int]) -> bool:
    """Reap those of pidfds that are our exited children; True when none is left to wait for."""
    for pid, fd in list(pidfds.items()):
        if reap_if_child(fd):
            os.close(fd)
            del pidfds[pid]
    return not pidfds


async def _wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True
