"""The server's own backends on this host are as closed to sandboxes as its API: a catch-all
allowlist reaches the host's loopback, but not the object store that holds every tenant's
workspaces (an S3 service on the host's loopback, often without auth) nor the trace collector;
`open` reaches nothing of the node at all."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from agentcell.client import AsyncSandbox
from tests.conftest import ServerFactory
from tests.loopback_http import QuietHandler, serving

pytestmark = pytest.mark.system

VIA_PROXY = {"NO_PROXY": "", "no_proxy": ""}


class _Backend(QuietHandler):
    def do_GET(self) -> None:
        body = b"every tenant's objects\n"
        self.answer(body)


@pytest.fixture
def backend() -> Iterator[int]:
    """Stands in for an S3 service and a trace collector on the host's loopback."""
    with serving(_Backend) as port:
        yield port


async def test_no_policy_but_naming_it_reaches_the_servers_object_store_on_this_host(
    server_factory: ServerFactory, backend: int
) -> None:
    endpoint = f"http://127.0.0.1:{backend}"
    env = {"AGENTCELL_STORE": "s3://workspaces/hunt", "AGENTCELL_S3_ENDPOINT": endpoint}
    server = server_factory(env=env)
    catch_all = {"egress": "allowlist", "allow": ["0.0.0.0/0"]}
    for network in ("open", catch_all):
        await _refused(server.url, network, endpoint)


async def _refused(api_url: str, network: str | Mapping[str, Any], endpoint: str) -> None:
    async with AsyncSandbox.create(network=network, api_url=api_url) as sbx:
        for how in ([], ["-p"]):
            result = await sbx.commands.run(
                ["curl", "-sS", "--max-time", "5", *how, f"{endpoint}/"], env=VIA_PROXY
            )
            reply = result.stdout + result.stderr
            assert "every tenant's objects" not in reply, (network, how, reply)
            assert "the agentcell server itself" in reply or "response 403" in reply, reply
