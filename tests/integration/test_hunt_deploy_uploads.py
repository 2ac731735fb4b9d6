"""A deploy body larger than any valid one is cut off where it is read, on the real server: the
form parser spooled a whole upload of any size into a temporary file (the node's /tmp) before the
archive's own 512 MiB bound was checked; and a config as large as a valid one is accepted."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration.test_hunt_deploy_archives import APP, entry, tar_of

MiB = 1 << 20
BOUNDARY = "hunt-boundary"
ECHO = {"cmd": "python3 app.py"}


def deploy_body(megabytes: int) -> Iterator[bytes]:
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="config"\r\n\r\n{json.dumps(ECHO)}'
        f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="code"; filename="c.tar"\r\n\r\n'
    ).encode()
    chunk = b"\0" * MiB
    for _ in range(megabytes):
        yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


class LargestSpool:
    """Watches the server's open files for the largest temporary (or upload) file it holds."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.largest = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        fds = Path(f"/proc/{self.pid}/fd")
        while not self._done.is_set():
            for fd in os.listdir(fds):
                try:
                    target = os.readlink(fds / fd)
                    if target.startswith("/tmp/") or "/uploads/" in target:
                        self.largest = max(self.largest, os.stat(fds / fd).st_size)
                except OSError:
                    pass
            time.sleep(0.02)

    def __enter__(self) -> LargestSpool:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
def test_an_oversized_deploy_is_cut_off_before_it_fills_the_disk(
    api: httpx.Client, fn_name: str, shared_server: ServerProcess, declared: bool
) -> None:
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    if declared:
        headers["content-length"] = str(sum(len(part) for part in deploy_body(1500)))
    with LargestSpool(shared_server.proc.pid) as spool:
        try:
            reply = api.put(f"/v1/functions/{fn_name}", content=deploy_body(1500), headers=headers)
        except httpx.TransportError:  # the server may answer and close while the client still sends
            reply = None
    assert spool.largest < 600 * MiB, f"the server spooled {spool.largest / MiB:.0f} MiB"
    if reply is not None:
        assert reply.status_code == 413, reply.text
        assert "512 MiB" in reply.json()["message"]
    assert api.get(f"/v1/functions/{fn_name}").status_code == 404


def test_a_config_as_large_as_a_valid_one_is_accepted(api: httpx.Client, fn_name: str) -> None:
    config = {**ECHO, "env": {f"V{i}": "x" * 32768 for i in range(64)}}  # 2 MiB of env
    files: dict[str, tuple[str | None, str | bytes]] = {
        "config": (None, json.dumps(config)),
        "code": ("c.tar", tar_of((entry("app.py"), APP))),
    }
    reply = api.put(f"/v1/functions/{fn_name}", files=files)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["config"]["env"]) == 64
