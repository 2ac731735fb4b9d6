"""Shared by the MCP benchmarks: the bridged stdio fixture server, deployed or run on the host."""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.server import free_port

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "mcp_stdio"
SDK_SERVER = ROOT / "bench" / "mcp_sdk_server.py"
SDK_CMD = "PYTHONPATH=site exec python3 server.py"
BRIDGE = ROOT / "src" / "agentcell" / "server" / "scheduler" / "mcp_bridge" / "bridge.py"
JSON_AND_SSE = {"accept": "application/json, text/event-stream"}
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "0"},
    },
}
WHOAMI = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}


def fixture_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(FIXTURE / "server.py", arcname="server.py")
    return buffer.getvalue()


def sdk_server_dir(parent: Path) -> Path:
    """A function directory: the SDK server as `server.py`, the pinned `mcp` SDK in `site/`
    (installed with pip for the sandbox's Python, which is the host's /usr/bin/python3)."""
    directory = parent / "mcp-sdk-fn"
    (directory / "site").mkdir(parents=True)
    (directory / "server.py").write_bytes(SDK_SERVER.read_bytes())
    pin = f"mcp=={importlib.metadata.version('mcp')}"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--target", str(directory / "site"), pin], check=True, stdout=subprocess.DEVNULL)
    return directory


def deploy_sdk_mcp(client: httpx.Client, name: str, directory: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.add(directory, arcname=".")
    body = {"cmd": SDK_CMD, "affinity": {"kind": "mcp"}, "idle_timeout_s": 3600}
    files: dict[str, tuple[str | None, bytes | str]] = {
        "config": (None, json.dumps(body)),
        "code": ("code.tar.gz", buffer.getvalue()),
    }
    client.put(f"/v1/functions/{name}", files=files).raise_for_status()


def deploy_mcp(client: httpx.Client, name: str, **config: Any) -> None:
    body = {"stdio": "python3 server.py", "affinity": {"kind": "mcp"}, "idle_timeout_s": 3600, **config}
    files: dict[str, tuple[str | None, bytes | str]] = {
        "config": (None, json.dumps(body)),
        "code": ("code.tar.gz", fixture_archive()),
    }
    client.put(f"/v1/functions/{name}", files=files).raise_for_status()


def initialize(client: httpx.Client, url: str) -> str:
    """A new MCP session at `url`; returns its id."""
    reply = client.post(url, json=INIT, headers=JSON_AND_SSE)
    reply.raise_for_status()
    session_id = reply.headers["mcp-session-id"]
    notice = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    client.post(url, json=notice, headers={**JSON_AND_SSE, "mcp-session-id": session_id}).raise_for_status()
    return session_id


class HostBridge:
    """The same bridge and stdio server as a deployed function, run directly on the host (or,
    given `sdk_dir`, the SDK server from `sdk_server_dir`)."""

    def __init__(self, sdk_dir: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PORT": str(self.port),
            "AGENTCELL_STDIO": f"exec /usr/bin/python3 {FIXTURE}/server.py",
        }
        self.started = time.perf_counter()
        argv = ["/usr/bin/python3", str(BRIDGE)] if sdk_dir is None else ["/bin/bash", "-c", SDK_CMD]
        self.proc = subprocess.Popen(argv, env=env, cwd=sdk_dir, stderr=subprocess.DEVNULL)
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.001)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()
