"""The cgroup backends' file formats, against fake cgroup trees (no root needed).

v2 cannot be exercised for real on the development machines (their unified hierarchy only has
hugetlb), so its limits and accounting are pinned here on a directory that looks like one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agentcell.errors import Conflict
from agentcell.server.sandbox.linux.cgroups import CgroupLimits, CgroupsV1, CgroupsV2

LIMITS = CgroupLimits(memory_bytes=256 << 20, cpu_millis=1500, pids_max=64)


@pytest.fixture
def v2_root(tmp_path: Path) -> Path:
    (tmp_path / "cgroup.subtree_control").write_text("")
    node = tmp_path / "agentcell-node"
    node.mkdir()
    (node / "cgroup.subtree_control").write_text("")
    return node


def test_v2_writes_limits_and_delegates_controllers(v2_root: Path) -> None:
    cgroups = CgroupsV2(v2_root)
    assert cgroups.create("sbx", LIMITS) == [str(v2_root / "sbx" / "cgroup.procs")]
    d = v2_root / "sbx"
    assert (d / "memory.max").read_text() == str(256 << 20)
    assert (d / "cpu.max").read_text() == "150000 100000"
    assert (d / "pids.max").read_text() == "64"
    for parent in (v2_root.parent, v2_root):
        assert (parent / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    with pytest.raises(Conflict):
        cgroups.create("sbx", LIMITS)


def test_v2_usage_and_listing(v2_root: Path) -> None:
    cgroups = CgroupsV2(v2_root)
    cgroups.create("sbx", LIMITS)
    d = v2_root / "sbx"
    (d / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (d / "memory.current").write_text("4096\n")
    (d / "memory.peak").write_text("8192\n")
    (d / "pids.current").write_text("3\n")
    (d / "cgroup.procs").write_text("12\n7\n")
    usage = cgroups.usage("sbx")
    assert (usage.cpu_ns, usage.memory_bytes, usage.memory_peak_bytes, usage.pids) == (
        1_500_000,
        4096,
        8192,
        3,
    )
    assert cgroups.pids("sbx") == [7, 12]
    assert cgroups.list_ids() == ["sbx"]


def test_v1_uses_one_root_per_controller(tmp_path: Path) -> None:
    roots = {c: tmp_path / c / "agentcell-node" for c in ("memory", "cpu", "cpuacct", "pids", "freezer")}
    for root in roots.values():
        root.parent.mkdir()
    cgroups = CgroupsV1(roots)
    procs = cgroups.create("sbx", LIMITS)
    assert procs == [str(root / "sbx" / "tasks") for root in roots.values()]  # joins skip the rwsem
    assert (roots["memory"] / "sbx" / "memory.limit_in_bytes").read_text() == str(256 << 20)
    assert (roots["cpu"] / "sbx" / "cpu.cfs_quota_us").read_text() == "150000"
    assert (roots["pids"] / "sbx" / "pids.max").read_text() == "64"
    cgroups.freeze("sbx")
    assert (roots["freezer"] / "sbx" / "freezer.state").read_text() == "FROZEN"


def test_tiny_cpu_shares_get_the_kernel_minimum() -> None:
    assert CgroupLimits(memory_bytes=1, cpu_millis=1, pids_max=1).cpu_quota_us == 1000
