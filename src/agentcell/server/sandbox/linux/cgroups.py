"""The cgroups of one node's sandboxes: limits, membership, accounting and teardown.

Every instance gets `<hierarchy>/agentcell-<node id>/<sandbox id>` in each hierarchy it needs.
cgroup v2 is used when the unified hierarchy at /sys/fs/cgroup offers memory, pids and cpu;
otherwise the v1 hierarchies (memory, cpu, cpuacct, pids and, if mounted, freezer). A start's
cgroups are made by the spawn worker in C, from the `CgroupPlan` that `plan()` returns (mkdir and
limit writes on a v1 host are ~0.5 ms of kernel time, better spent beside the event loop than on
it); `create()` carries out the same plan in Python. Workers join by writing "0" to the plan's
`procs` files before they fork (`tasks` on v1: see `CgroupsV1.procs_files`). All methods here are
quick, non-blocking file operations: waiting is the caller's job, so that an event loop never
sleeps in here.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agentcell.errors import Conflict, Unavailable
from agentcell.server.sandbox.driver import ResourceUsage

V2_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")
V1_OPTIONAL = ("freezer",)
CPU_PERIOD_US = 100_000


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    memory_bytes: int
    cpu_millis: int
    """1000 = one full core"""
    pids_max: int

    @property
    def cpu_quota_us(self) -> int:
        # The kernel refuses quotas under 1 ms per period.
        return max(1000, self.cpu_millis * CPU_PERIOD_US // 1000)


@dataclass(frozen=True, slots=True)
class CgroupPlan:
    """What making one instance's cgroups takes, in this order."""

    roots: tuple[str, ...]
    """the node's directories, made if missing"""
    dirs: tuple[str, ...]
    """the instance's directories; one that exists already is a conflict"""
    limits: tuple[tuple[str, str], ...]
    """(file, value) writes"""
    optional_limits: tuple[tuple[str, str], ...]
    """writes to files that only some kernels have (swap accounting), skipped where missing"""
    procs: tuple[str, ...]
    """the files a process writes itself ("0") into: `cgroup.procs`, or `tasks` on v1"""

    def helper_args(self) -> list[str]:
        """The plan as options of the helper's spawn worker."""
        args: list[str] = []
        for root in self.roots:
            args += ["--cgroup-root", root]
        for d in self.dirs:
            args += ["--cgroup-dir", d]
        for path, value in self.limits:
            args += ["--cgroup-set", path, value]
        for path, value in self.optional_limits:
            args += ["--cgroup-set-opt", path, value]
        for path in self.procs:
            args += ["--cgroup-procs", path]
        return args


class Cgroups(Protocol):
    """The cgroup tree of one node. Ids are sandbox ids (already validated as path-safe)."""

    def plan(self, sandbox_id: str, limits: CgroupLimits) -> CgroupPlan:
        """How to make the instance's cgroups with its limits (the spawn worker does it)."""
        ...

    def create(self, sandbox_id: str, limits: CgroupLimits) -> list[str]:
        """Make the instance's cgroups with its limits; return the cgroup.procs files to join.
        Raises Conflict if they exist already."""
        ...

    def procs_files(self, sandbox_id: str) -> list[str]: ...

    def exists(self, sandbox_id: str) -> bool: ...

    def pids(self, sandbox_id: str) -> list[int]:
        """Host pids of every live process in the instance (empty once it is gone)."""
        ...

    def usage(self, sandbox_id: str) -> ResourceUsage: ...

    def set_limits(self, sandbox_id: str, limits: CgroupLimits) -> None:
        """Rewrite a live instance's limits (a claimed pool instance)."""
        ...

    @property
    def can_freeze(self) -> bool:
        """Whether this host has a freezer (v1 hosts may not mount one)."""
        ...

    def freeze(self, sandbox_id: str) -> None:
        """Ask the kernel to freeze every process; `is_frozen` tells when it has."""
        ...

    def is_frozen(self, sandbox_id: str) -> bool: ...

    def thaw(self, sandbox_id: str) -> None: ...

    def kill_all(self, sandbox_id: str) -> int:
        """SIGKILL every process once; returns how many there were. Call until it returns 0."""
        ...

    def remove(self, sandbox_id: str) -> bool:
        """rmdir the instance's cgroups; False while processes are still leaving them."""
        ...

    def list_ids(self) -> list[str]:
        """Every instance with a cgroup under this node's root (to find orphans)."""
        ...

    def remove_root(self) -> None:
        """Remove `agentcell-<node id>` where it is empty (at driver close)."""
        ...


def open_cgroups(node_id: str) -> Cgroups:
    """Probe the host and return the backend that can enforce limits here."""
    if _v2_controllers() >= {"memory", "pids", "cpu"}:
        return CgroupsV2(V2_ROOT / f"agentcell-{node_id}")
    mounts = _v1_mounts()
    missing = [c for c in V1_CONTROLLERS if c not in mounts]
    if missing:
        raise Unavailable(
            "the process-tier driver needs cgroup controllers memory, cpu and pids (v2 at "
            f"/sys/fs/cgroup, or v1 hierarchies); this host lacks v1 {', '.join(missing)}"
        )
    roots = {c: mounts[c] / f"agentcell-{node_id}" for c in (*V1_CONTROLLERS, *V1_OPTIONAL) if c in mounts}
    return CgroupsV1(roots)


def _v2_controllers() -> set[str]:
    try:
        return set((V2_ROOT / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


def _v1_mounts() -> dict[str, Path]:
    """controller → mount point of its v1 hierarchy, from /proc/self/mountinfo."""
    found: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, extra = left.split(), right.split()
        if len(fields) < 5 or len(extra) < 3 or extra[0] != "cgroup":
            continue
        for option in extra[2].split(","):
            found.setdefault(option, Path(fields[4]))
    return found


def _read_int(path: str | Path, default: int = 0) -> int:
    try:
        with open(path, "rb") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _read_pids(path: str) -> list[int]:
    try:
        with open(path, "rb") as f:
            return sorted(int(p) for p in f.read().split())
    except FileNotFoundError:
        return []


def _kill(pids: Iterable[int]) -> int:
    count = 0
    for pid in pids:
        count += 1
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    return count


class _Tree:
    """What both versions share: one directory per instance under each root."""

    def __init__(self, roots: list[Path]) -> None:
        self._roots = list(dict.fromkeys(roots))  # co-mounted controllers share a root
        self._root_names = tuple(str(root) for root in self._roots)  # plain strings: on every start

    def _dirs(self, sandbox_id: str) -> list[str]:
        # plain strings, as on every start: each stop builds these several times
        return [f"{root}/{sandbox_id}" for root in self._root_names]

    def _plan(
        self, sandbox_id: str, limits: list[tuple[str, str]], optional: list[tuple[str, str]]
    ) -> CgroupPlan:
        return CgroupPlan(
            roots=self._root_names,
            dirs=tuple(f"{root}/{sandbox_id}" for root in self._root_names),
            limits=tuple(limits),
            optional_limits=tuple(optional),
            procs=tuple(self.procs_files(sandbox_id)),
        )

    def plan(self, sandbox_id: str, limits: CgroupLimits) -> CgroupPlan:
        raise NotImplementedError

    def create(self, sandbox_id: str, limits: CgroupLimits) -> list[str]:
        plan = self.plan(sandbox_id, limits)
        for root in plan.roots:
            os.makedirs(root, exist_ok=True)
        made: list[str] = []
        try:
            for d in plan.dirs:
                os.mkdir(d)
                made.append(d)
        except FileExistsError:
            for d in reversed(made):
                os.rmdir(d)
            raise Conflict(f"sandbox {sandbox_id} already has cgroups on this node") from None
        for path, value in plan.limits:
            Path(path).write_text(value)
        for path, value in plan.optional_limits:
            if os.path.exists(path):
                Path(path).write_text(value)
        return list(plan.procs)

    def procs_files(self, sandbox_id: str) -> list[str]:
        return [f"{root}/{sandbox_id}/cgroup.procs" for root in self._root_names]

    def exists(self, sandbox_id: str) -> bool:
        return any(os.path.isdir(d) for d in self._dirs(sandbox_id))

    def pids(self, sandbox_id: str) -> list[int]:
        # One hierarchy is enough: every process that enters an instance joins its hierarchies in
        # the plan's order (`procs_files`) and never leaves one, so the first holds every process
        # that is in any of them. A stop reads this three times, and a cgroup file took ~50 µs to
        # open here (bench/RESULTS.md, session 18).
        return _read_pids(f"{self._root_names[0]}/{sandbox_id}/cgroup.procs")

    def kill_all(self, sandbox_id: str) -> int:
        return _kill(self.pids(sandbox_id))

    def remove(self, sandbox_id: str) -> bool:
        gone = True
        for d in self._dirs(sandbox_id):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise
                gone = False
        return gone

    def list_ids(self) -> list[str]:
        ids: set[str] = set()
        for root in self._roots:
            try:
                ids.update(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False))
            except FileNotFoundError:
                continue
        return sorted(ids)

    def remove_root(self) -> None:
        for root in self._roots:
            try:
                root.rmdir()
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
                    raise


class CgroupsV1(_Tree):
    """Legacy hierarchies, one per controller (cpu and cpuacct may be separate mounts)."""

    def __init__(self, roots: dict[str, Path]) -> None:
        super().__init__(list(roots.values()))
        self._by_controller = roots

    def _dir(self, controller: str, sandbox_id: str) -> str:
        return f"{self._by_controller[controller]}/{sandbox_id}"

    def procs_files(self, sandbox_id: str) -> list[str]:
        # `tasks`, not `cgroup.procs`: a thread that moves itself ("0") through `tasks` skips the
        # global cgroup_threadgroup_rwsem, whose write side waits for an RCU grace period (five
        # joins after a quiet spell: 10-14 ms → 2-3 ms, and no serialising under a burst). The
        # helpers that join are single-threaded, so moving the thread moves the process.
        return [f"{root}/{sandbox_id}/tasks" for root in self._root_names]

    def plan(self, sandbox_id: str, limits: CgroupLimits) -> CgroupPlan:
        memory, cpu, pids = (f"{self._by_controller[c]}/{sandbox_id}" for c in ("memory", "cpu", "pids"))
        writes = [
            (f"{memory}/memory.limit_in_bytes", str(limits.memory_bytes)),
            (f"{cpu}/cpu.cfs_period_us", str(CPU_PERIOD_US)),
            (f"{cpu}/cpu.cfs_quota_us", str(limits.cpu_quota_us)),
            (f"{pids}/pids.max", str(limits.pids_max)),
        ]
        # Only with swap accounting; keeps the limit from spilling to swap.
        swap = [(f"{memory}/memory.memsw.limit_in_bytes", str(limits.memory_bytes))]
        return self._plan(sandbox_id, writes, swap)

    def usage(self, sandbox_id: str) -> ResourceUsage:
        memory = self._dir("memory", sandbox_id)
        return ResourceUsage(
            cpu_ns=_read_int(f"{self._dir('cpuacct', sandbox_id)}/cpuacct.usage"),
            memory_bytes=_read_int(f"{memory}/memory.usage_in_bytes"),
            memory_peak_bytes=_read_int(f"{memory}/memory.max_usage_in_bytes"),
            pids=_read_int(f"{self._dir('pids', sandbox_id)}/pids.current"),
        )

    def set_limits(self, sandbox_id: str, limits: CgroupLimits) -> None:
        plan = self.plan(sandbox_id, limits)
        memory, memsw = plan.limits[0], plan.optional_limits[0]
        # v1 keeps memory.limit_in_bytes <= memory.memsw.limit_in_bytes at every step.
        raising = limits.memory_bytes > _read_int(Path(memory[0]))
        ordered = [memsw, memory] if raising else [memory, memsw]
        for path, value in [*ordered, *plan.limits[1:]]:
            if path != memsw[0] or os.path.exists(path):
                Path(path).write_text(value)

    def _freezer_state(self, sandbox_id: str, state: str) -> None:
        if "freezer" not in self._by_controller:
            raise Unavailable("this host has no v1 freezer hierarchy mounted")
        with open(f"{self._dir('freezer', sandbox_id)}/freezer.state", "w") as f:
            f.write(state)

    @property
    def can_freeze(self) -> bool:
        return "freezer" in self._by_controller

    def freeze(self, sandbox_id: str) -> None:
        self._freezer_state(sandbox_id, "FROZEN")

    def is_frozen(self, sandbox_id: str) -> bool:
        if not self.can_freeze:
            return False
        with open(f"{self._dir('freezer', sandbox_id)}/freezer.state", "rb") as f:
            return f.read().strip() == b"FROZEN"

    def thaw(self, sandbox_id: str) -> None:
        self._freezer_state(sandbox_id, "THAWED")


class CgroupsV2(_Tree):
    """The unified hierarchy. Untested on the development machines (their v2 has only hugetlb)."""

    CONTROLLERS = "+memory +pids +cpu"

    def __init__(self, root: Path) -> None:
        super().__init__([root])
        self._root = root

    def _enable_controllers(self) -> None:
        # A child cgroup gets a controller only if every ancestor delegates it.
        for parent in (self._root.parent, self._root):
            wanted = {c.lstrip("+") for c in self.CONTROLLERS.split()}
            enabled = set((parent / "cgroup.subtree_control").read_text().split())
            if not wanted <= enabled:
                (parent / "cgroup.subtree_control").write_text(self.CONTROLLERS)

    def plan(self, sandbox_id: str, limits: CgroupLimits) -> CgroupPlan:
        self._root.mkdir(exist_ok=True)
        self._enable_controllers()
        d = f"{self._root}/{sandbox_id}"
        writes = [
            (f"{d}/memory.max", str(limits.memory_bytes)),
            (f"{d}/cpu.max", f"{limits.cpu_quota_us} {CPU_PERIOD_US}"),
            (f"{d}/pids.max", str(limits.pids_max)),
        ]
        return self._plan(sandbox_id, writes, [(f"{d}/memory.swap.max", "0")])

    def usage(self, sandbox_id: str) -> ResourceUsage:
        d = self._root / sandbox_id
        usage_us = 0
        try:
            for line in (d / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    usage_us = int(value)
        except OSError:
            pass
        current = _read_int(d / "memory.current")
        return ResourceUsage(
            cpu_ns=usage_us * 1000,
            memory_bytes=current,
            memory_peak_bytes=_read_int(d / "memory.peak", default=current),
            pids=_read_int(d / "pids.current"),
        )

    def set_limits(self, sandbox_id: str, limits: CgroupLimits) -> None:
        for path, value in self.plan(sandbox_id, limits).limits:
            Path(path).write_text(value)

    @property
    def can_freeze(self) -> bool:
        return True

    def freeze(self, sandbox_id: str) -> None:
        (self._root / sandbox_id / "cgroup.freeze").write_text("1")

    def is_frozen(self, sandbox_id: str) -> bool:
        return "frozen 1" in (self._root / sandbox_id / "cgroup.events").read_text().splitlines()

    def thaw(self, sandbox_id: str) -> None:
        (self._root / sandbox_id / "cgroup.freeze").write_text("0")

    def kill_all(self, sandbox_id: str) -> int:
        pids = self.pids(sandbox_id)
        kill_file = self._root / sandbox_id / "cgroup.kill"
        if pids and kill_file.exists():  # Linux 5.14+: one write, no fork races
            kill_file.write_text("1")
            return len(pids)
        return _kill(pids)
