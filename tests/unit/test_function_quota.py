"""Tenants' function quotas and the node's disk floor, on real files: the unpacker charges what it
writes exactly as `code_bytes` measures stored code, a deploy past a tenant's max_code_mb or the
node's free-space floor stops with nothing left behind, max_functions counts only new names, and
what a tenant stores is read back from disk (a restarted server sees it)."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from starlette.datastructures import UploadFile
from starlette.requests import Request

from agentcell.cli.main import cli
from agentcell.errors import InvalidArgument, QuotaExceeded, Unavailable
from agentcell.protocol.tenants import TenantQuotas
from agentcell.server.api.functions import bounded, save_upload
from agentcell.server.scheduler.code import (
    ENTRY_BYTES,
    CodeBudget,
    code_bytes,
    remove_code,
    room_bytes,
    stale_code,
    unpack_code,
    unpack_staged,
)
from agentcell.server.scheduler.function_quota import FunctionQuota

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PLENTY = 1 << 50


def archive(tmp_path: Path, entries: list[tuple[str, bytes | str | None]]) -> Path:
    """A tar of (name, data) files, (name, None) directories and (name, "->target") symlinks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data.removeprefix("->")
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path = tmp_path / f"code-{len(list(tmp_path.iterdir()))}.tar.gz"
    path.write_bytes(buffer.getvalue())
    return path


MIXED: list[tuple[str, bytes | str | None]] = [
    ("app.py", b"print(1)\n"),
    ("pkg/", None),
    ("pkg/", None),  # a directory may repeat
    ("pkg/deep/er/data.bin", b"x" * (10 * KiB + 1)),  # its parents made on the way
    ("empty", b""),
    ("link", "->pkg/deep"),
    ("dangling", "->/nowhere"),
]


def budget(quota_bytes: int = PLENTY, stored_bytes: int = 0) -> CodeBudget:
    return CodeBudget("acme", quota_bytes, stored_bytes)


def plenty(_: Path) -> int:
    return PLENTY


def test_the_unpacker_charges_exactly_what_code_bytes_measures(tmp_path: Path) -> None:
    target = tmp_path / "v1"
    target.mkdir()
    spent = budget()
    unpack_code(archive(tmp_path, MIXED), target, spent, plenty)
    # the top, pkg, deep, er, two links, two small files, and 10 KiB + 1 rounded up to 12 KiB
    assert spent.written_bytes == 8 * ENTRY_BYTES + 12 * KiB
    assert code_bytes(target) == spent.written_bytes


def test_code_past_the_tenant_quota_is_refused_and_nothing_stays(tmp_path: Path) -> None:
    target = tmp_path / "v1"
    target.mkdir()
    code = archive(tmp_path, [("app.py", b"1"), ("big.bin", b"\0" * MiB)])
    with pytest.raises(QuotaExceeded) as refused:
        unpack_code(code, target, budget(quota_bytes=2 * MiB, stored_bytes=MiB), plenty)
    message = str(refused.value)
    assert "quota of 2 MiB" in message and "max_code_mb" in message and "1.0 MiB stored" in message
    assert "delete functions" in message
    assert not target.exists()


def test_code_that_would_pass_the_node_s_free_space_floor_is_a_503_and_nothing_stays(
    tmp_path: Path,
) -> None:
    target = tmp_path / "v1"
    target.mkdir()
    code = archive(tmp_path, [("app.py", b"1"), ("big.bin", b"\0" * MiB)])
    with pytest.raises(Unavailable) as refused:
        unpack_code(code, target, None, lambda _: MiB // 2)
    assert "short of disk" in str(refused.value)
    assert not target.exists()


def test_the_floor_is_five_percent_of_the_disk_at_most_one_gib() -> None:
    def disk(total: int, available: int) -> Callable[[Path], os.statvfs_result]:
        stats = SimpleNamespace(f_frsize=4096, f_blocks=total // 4096, f_bavail=available // 4096)
        return lambda _: stats  # type: ignore[return-value]

    assert room_bytes(Path("/"), disk(10 * GiB, GiB)) == GiB - GiB // 2  # 5 % of 10 GiB: 512 MiB
    assert room_bytes(Path("/"), disk(1 << 40, 2 * GiB)) == GiB  # 5 % would be 51 GiB: 1 GiB
    assert room_bytes(Path("/"), disk(10 * GiB, 100 * MiB)) < 0  # below the floor already


def test_a_tree_deeper_than_the_walkers_can_follow_is_refused_not_a_crash(tmp_path: Path) -> None:
    """It used to unpack, then fail sealing it with RecursionError (a 500), leaving it behind."""
    target = tmp_path / "v1"
    target.mkdir()
    with pytest.raises(InvalidArgument, match="levels deep; at most 256"):
        unpack_code(archive(tmp_path, [("a/" * 1500 + "f", b"x")]), target, None, plenty)
    assert not target.exists()


async def test_an_upload_that_would_pass_the_floor_is_a_503_and_leaves_no_file(tmp_path: Path) -> None:
    upload = UploadFile(io.BytesIO(b"x" * (3 * MiB)))
    with pytest.raises(Unavailable, match="short of disk"):
        await save_upload(upload, tmp_path, room=lambda _: MiB // 2)
    assert os.listdir(tmp_path) == []
    saved = await save_upload(UploadFile(io.BytesIO(b"x" * MiB)), tmp_path, room=plenty)
    assert os.stat(saved).st_size == MiB


class Quotas:
    """Tenants' quotas, changed by the test as an admin would."""

    def __init__(self) -> None:
        self.of: dict[str, TenantQuotas] = {}

    def __call__(self, tenant: str) -> TenantQuotas:
        return self.of.get(tenant) or TenantQuotas()


async def deploy(quota: FunctionQuota, code_root: Path, name: str, code: Path, deployed: list[str]) -> None:
    """What the deploy route and Scheduler.deploy do with the code: unpack it within the budget
    (in a thread, as the scheduler does), then move it into place as the next version, deployed."""
    async with quota.deploying(name) as budget:
        staging = await asyncio.to_thread(unpack_staged, code, code_root / name, budget)
        versions = [p for p in (code_root / name).iterdir() if p.name.startswith("v")]
        staging.rename(code_root / name / f"v{len(versions) + 1}")
        if name not in deployed:
            deployed.append(name)


async def test_max_functions_refuses_a_new_name_but_never_a_redeploy(tmp_path: Path) -> None:
    quotas = Quotas()
    quotas.of["acme"] = TenantQuotas(max_functions=1)
    deployed = ["other.a", "other.b", "c"]  # other tenants' (c: the default tenant's)
    quota = FunctionQuota(tmp_path / "functions", quotas, lambda: deployed)
    code = archive(tmp_path, [("app.py", b"1")])
    await deploy(quota, tmp_path / "functions", "acme.one", code, deployed)
    await deploy(quota, tmp_path / "functions", "acme.one", code, deployed)
    with pytest.raises(QuotaExceeded) as refused:
        await deploy(quota, tmp_path / "functions", "acme.two", code, deployed)
    assert "at its quota of 1 functions (max_functions)" in str(refused.value)
    assert "DELETE /v1/functions/{name}" in str(refused.value)
    quotas.of["acme"] = TenantQuotas(max_functions=2)
    await deploy(quota, tmp_path / "functions", "acme.two", code, deployed)


async def test_two_new_functions_deployed_at_once_cannot_both_pass_max_functions(tmp_path: Path) -> None:
    quotas = Quotas()
    quotas.of["acme"] = TenantQuotas(max_functions=1)
    deployed: list[str] = []
    quota = FunctionQuota(tmp_path / "functions", quotas, lambda: deployed)
    code = archive(tmp_path, [("app.py", b"1")])
    outcomes = await asyncio.gather(
        deploy(quota, tmp_path / "functions", "acme.one", code, deployed),
        deploy(quota, tmp_path / "functions", "acme.two", code, deployed),
        return_exceptions=True,
    )
    assert sum(isinstance(o, QuotaExceeded) for o in outcomes) == 1
    assert len(deployed) == 1


async def test_the_code_quota_counts_every_stored_version_and_survives_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "functions"
    quotas = Quotas()
    quotas.of["acme"] = TenantQuotas(max_code_mb=1)
    deployed: list[str] = []
    quota = FunctionQuota(root, quotas, lambda: deployed)
    half = archive(tmp_path, [("data.bin", b"\0" * (400 * KiB))])
    await deploy(quota, root, "acme.one", half, deployed)
    await deploy(quota, root, "acme.one", half, deployed)  # v1 stays (say an instance runs it)
    stored = await quota.stored_bytes("acme")
    assert stored == code_bytes(root / "acme.one" / "v1") + code_bytes(root / "acme.one" / "v2")
    with pytest.raises(QuotaExceeded, match="max_code_mb"):
        await deploy(quota, root, "acme.two", half, deployed)
    assert sorted(p.name for p in (root / "acme.one").iterdir()) == ["v1", "v2"]  # nothing half-made
    assert not (root / "acme.two").exists() or list((root / "acme.two").iterdir()) == []

    # a new server: what is stored is read from disk
    restarted = FunctionQuota(root, quotas, lambda: deployed)
    assert await restarted.stored_bytes("acme") == stored
    with pytest.raises(QuotaExceeded, match="max_code_mb"):
        await deploy(restarted, root, "acme.two", half, deployed)

    shutil.rmtree(root / "acme.one" / "v1")  # its last instance ended: the scheduler removes it
    await deploy(restarted, root, "acme.two", half, deployed)
    assert await restarted.stored_bytes("acme") == sum(
        code_bytes(v) for v in (root / "acme.one" / "v2", root / "acme.two" / "v1")
    )


async def test_tenants_without_these_quotas_deploy_with_no_budget(tmp_path: Path) -> None:
    quotas = Quotas()
    quotas.of["acme"] = TenantQuotas(max_code_mb=0)  # another tenant's quota changes nothing here
    deployed: list[str] = []
    quota = FunctionQuota(tmp_path / "functions", quotas, lambda: deployed)
    await deploy(quota, tmp_path / "functions", "free", archive(tmp_path, [("a", b"1")]), deployed)
    await deploy(quota, tmp_path / "functions", "bob.x", archive(tmp_path, [("a", b"1")]), deployed)
    with pytest.raises(QuotaExceeded, match="quota of 0 MiB"):
        await deploy(quota, tmp_path / "functions", "acme.x", archive(tmp_path, [("a", b"1")]), deployed)


def test_code_deeper_than_python_can_recurse_is_still_removed(tmp_path: Path) -> None:
    """What a deploy of a 1500-level tree left before MAX_CODE_DEPTH: shutil.rmtree's
    RecursionError there stopped the server at its next start (stale code is removed then)."""
    staging = tmp_path / "fn" / ".staging-deep"
    staging.mkdir(parents=True)
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1500):
        os.mkdir("a", dir_fd=fd)
        deeper = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.close(fd)
    remove_code(stale_code(tmp_path, kept=[]))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("option", "value"), [("--max-functions", "-1"), ("--max-code", "lots"), ("--max-code", "2000000TiB")]
)
def test_bad_quota_values_are_cli_usage_errors_naming_the_option(option: str, value: str) -> None:
    result = CliRunner().invoke(cli, ["--url", "http://127.0.0.1:1", "tenant", "set", "acme", option, value])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output


async def test_a_deploy_body_that_would_pass_the_floor_where_it_is_spooled_is_a_503() -> None:
    chunks = [b"x" * (256 * KiB)] * 8

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": chunks.pop(), "more_body": bool(chunks)}

    request = Request({"type": "http", "method": "PUT", "headers": []}, receive)
    with pytest.raises(Unavailable, match="short of disk"):
        await bounded(request, room=lambda _: MiB - 1).body()
    chunks[:] = [b"x" * (256 * KiB)] * 8
    assert len(await bounded(request, room=lambda _: MiB).body()) == 2 * MiB
