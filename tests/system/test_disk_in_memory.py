"""A sandbox's disk is a tmpfs, held in RAM: nothing makes it hold more than the sandbox's memory
limit. Pages the sandbox writes are charged to its memory cgroup, but those the server writes for
it (the files API, workspace restores) are charged to the server's, so the tmpfs size is what
bounds them: a 1 GiB disk on a 64 MiB sandbox holds 64 MiB, whoever writes, /dev/shm included.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import httpx
import pytest

from agentcell.errors import Conflict, QuotaExceeded
from agentcell.server.sandbox.driver import SandboxSpec
from agentcell.server.sandbox.linux.driver import LinuxDriver
from tests.conftest import AUTH
from tests.system.conftest import MiB, run

pytestmark = pytest.mark.system


async def zeros(total: int) -> AsyncIterator[bytes]:
    chunk = bytes(MiB)
    for _ in range(total // MiB):
        yield chunk


async def disk_sizes(driver: LinuxDriver, sandbox_id: str) -> tuple[int, int]:
    """(size, used) in bytes of the filesystem of /home/user, as the sandbox sees it."""
    df = await run(driver, sandbox_id, ["df", "-B1", "--output=size,used", "/home/user"])
    size, used = df.stdout.split()[-2:]
    return int(size), int(used)


async def test_files_written_by_the_server_stop_at_the_memory_limit(linux_driver: LinuxDriver) -> None:
    """A 96 MiB write through the node's file access (the API's path) into a 64 MiB-memory,
    1 GiB-disk sandbox fails as a full disk naming memory_mb, and leaves no partial file; so does
    one into /dev/shm, which shares the same tmpfs. The sandbox still runs."""
    await linux_driver.start(SandboxSpec(sandbox_id="ram", memory_bytes=64 * MiB, disk_bytes=1024 * MiB))
    files = linux_driver.files("ram")
    for path in ("/home/user/big.bin", "/dev/shm/big.bin"):
        with pytest.raises(QuotaExceeded, match="memory_mb") as refused:
            await files.write(path, zeros(96 * MiB))
        assert path in refused.value.message
    size, used = await disk_sizes(linux_driver, "ram")
    assert size == 64 * MiB and used < MiB, "the partial write was left behind"
    shm = os.statvfs(f"/proc/{linux_driver.init_pid('ram')}/root/dev/shm")
    assert shm.f_blocks * shm.f_frsize == 64 * MiB
    await files.write("/home/user/fits.bin", zeros(16 * MiB))
    assert (await run(linux_driver, "ram", ["stat", "-c", "%s", "fits.bin"])).stdout == f"{16 * MiB}\n"


async def test_the_disk_follows_new_memory_limits(linux_driver: LinuxDriver) -> None:
    """set_limits (a pooled instance claimed by a create) resizes the disk to min(disk, memory);
    a shrink below what the disk holds is refused and changes nothing."""
    await linux_driver.start(SandboxSpec(sandbox_id="pooled", memory_bytes=512 * MiB, disk_bytes=1024 * MiB))
    assert (await disk_sizes(linux_driver, "pooled"))[0] == 512 * MiB
    await linux_driver.set_limits("pooled", 1000, 64 * MiB, 512)
    assert (await disk_sizes(linux_driver, "pooled"))[0] == 64 * MiB
    with pytest.raises(QuotaExceeded):
        await linux_driver.files("pooled").write("big.bin", zeros(96 * MiB))
    await linux_driver.set_limits("pooled", 1000, 2048 * MiB, 512)
    assert (await disk_sizes(linux_driver, "pooled"))[0] == 1024 * MiB
    await linux_driver.files("pooled").write("big.bin", zeros(96 * MiB))
    with pytest.raises(Conflict, match="holds more files"):
        await linux_driver.set_limits("pooled", 1000, 64 * MiB, 512)
    assert (await disk_sizes(linux_driver, "pooled"))[0] == 1024 * MiB
    assert (await linux_driver.usage("pooled")).memory_bytes < 64 * MiB  # the server's pages, not its


def test_api_upload_past_the_memory_limit_is_a_full_disk(server_url: str) -> None:
    """Through the REST API on a real server (the create claims a pooled instance, whose limits
    are rewritten): a PUT larger than memory_mb is a 429 quota_exceeded, the sandbox keeps
    running, and its disk is no larger than its memory."""
    with httpx.Client(headers=AUTH, base_url=server_url, timeout=60) as api:
        created = api.post("/v1/sandboxes", json={"memory_mb": 64, "disk_mb": 1024}).raise_for_status()
        base = f"/v1/sandboxes/{created.json()['id']}"
        try:
            put = api.put(f"{base}/files", params={"path": "/home/user/big.bin"}, content=bytes(96 * MiB))
            assert put.status_code == 429, put.text
            assert put.json()["code"] == "quota_exceeded" and "memory_mb" in put.json()["message"]
            df = api.post(f"{base}/commands", json={"cmd": "df -B1 --output=size,used /home/user"})
            events = [json.loads(line) for line in df.raise_for_status().text.splitlines()]
            size, used = "".join(e["data"] for e in events if e["type"] == "stdout").split()[-2:]
            assert int(size) == 64 * MiB and int(used) < MiB
        finally:
            api.delete(base)
