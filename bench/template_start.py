"""template_start: sandbox create → first exec finished, from a built template vs from `base`.

Same server, same run, interleaved (template, base, template, ...) so machine noise hits both.
Also reports the template's build time (POST /v1/templates → `end` event) against the same
installs run straight on the host (`pip install --target`, `npm install -g --prefix`, no sandbox).
The recipe: a local wheel (pip), a local npm tarball and a command; no network.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.packages import tiny_npm_package, tiny_wheel

from bench.client import LeanClient
from bench.report import emit, median, percentile, progress
from bench.server import BenchServer

NAME = "template_start"
RUNS = 100
TEMPLATE = "bench-tpl"


def recipe() -> dict[str, object]:
    wheel_name, wheel = tiny_wheel()
    npm_name, npm = tiny_npm_package()
    return {
        "files": [
            {"path": wheel_name, "content_b64": base64.b64encode(wheel).decode()},
            {"path": npm_name, "content_b64": base64.b64encode(npm).decode()},
        ],
        "pip": ["acelltiny"],
        "pip_no_index": True,
        "npm": [f"./{npm_name}"],
        "commands": ["echo built > /opt/template/marker"],
    }


def raw_install_s() -> float:
    """The same installs on the host, as root, with no sandbox and no server."""
    work = Path(tempfile.mkdtemp(prefix="agentcell-bench-raw-"))
    try:
        wheel_name, wheel = tiny_wheel()
        npm_name, npm = tiny_npm_package()
        (work / wheel_name).write_bytes(wheel)
        (work / npm_name).write_bytes(npm)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "PIP_ROOT_USER_ACTION": "ignore"}
        started = time.perf_counter()
        pip = ["/usr/bin/python3", "-m", "pip", "install", "-q", "--target", str(work / "py"), "--no-index"]
        subprocess.run([*pip, "--find-links", str(work), "acelltiny"], check=True, env=env, cwd=work)
        npm_cmd = [
            "npm",
            "install",
            "-g",
            "--prefix",
            str(work / "node"),
            "--offline",
            "--no-audit",
            "--no-fund",
        ]
        subprocess.run([*npm_cmd, str(work / npm_name)], check=True, env=env, cwd=work, capture_output=True)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def build(client: LeanClient) -> float:
    started = time.perf_counter()
    status, body = await client.request("POST", "/v1/templates", {"name": TEMPLATE, "recipe": recipe()})
    assert status == 202, body
    build_id = json.loads(body)["id"]
    status, events = await client.request("GET", f"/v1/template-builds/{build_id}/events")
    end = json.loads(events.splitlines()[-1])
    assert end["state"] == "ready", end
    return time.perf_counter() - started


async def start_ms(client: LeanClient, template: str) -> float:
    started = time.perf_counter()
    status, body = await client.request("POST", "/v1/sandboxes", {"template": template, "timeout_s": 300})
    assert status == 201, body
    sid = json.loads(body)["id"]
    status, events = await client.request("POST", f"/v1/sandboxes/{sid}/commands", {"argv": ["true"]})
    assert b'"exit_code":0' in events, events
    elapsed = (time.perf_counter() - started) * 1000
    await client.request("DELETE", f"/v1/sandboxes/{sid}")
    return elapsed


async def measure(port: int) -> tuple[float, list[float], list[float]]:
    async with LeanClient("127.0.0.1", port) as client:
        build_s = await build(client)
        for _ in range(3):
            await start_ms(client, TEMPLATE)
            await start_ms(client, "base")
        from_template: list[float] = []
        from_base: list[float] = []
        for _ in range(RUNS):
            from_template.append(await start_ms(client, TEMPLATE))
            from_base.append(await start_ms(client, "base"))
        return build_s, from_template, from_base


def main() -> None:
    progress(f"{NAME}: baseline build (the same installs on the host)")
    raw_s = raw_install_s()
    with BenchServer() as server:
        progress(f"{NAME}: build, then {RUNS} starts each from the template and from base, interleaved")
        build_s, from_template, from_base = asyncio.run(measure(server.port))
    emit(NAME, "start_p50_ms", median(from_template), "ms", median(from_base))
    emit(NAME, "start_p95_ms", percentile(from_template, 95), "ms", percentile(from_base, 95))
    emit(NAME, "build_s", build_s, "s", raw_s)


if __name__ == "__main__":
    main()
