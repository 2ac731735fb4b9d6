"""The same-run baseline for the code benches: stock ipykernel (Debian's python3, as in a sandbox)
driven by jupyter_client's blocking client on the host, outside any sandbox."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import KernelManager

KERNEL_ARGV = ["/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"]


@contextmanager
def local_kernel() -> Iterator[BlockingKernelClient]:
    """A started kernel and a ready client; both shut down on exit."""
    manager = KernelManager()
    manager._kernel_spec = KernelSpec(argv=KERNEL_ARGV, display_name="python3", language="python")
    manager.start_kernel(env={"PYDEVD_DISABLE_FILE_VALIDATION": "1"})
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def execute_ms(client: BlockingKernelClient, code: str = "1+1") -> float:
    """execute → reply and idle (what a caller waits for before it has every output)."""
    started = time.perf_counter()
    reply = client.execute_interactive(code, timeout=60, output_hook=lambda _msg: None)
    assert reply["content"]["status"] == "ok", reply
    return (time.perf_counter() - started) * 1000


def start_and_first_ms() -> tuple[float, float]:
    """(start + first execute, first execute alone) of a new kernel."""
    started = time.perf_counter()
    with local_kernel() as client:
        first = execute_ms(client)
        return (time.perf_counter() - started) * 1000, first
