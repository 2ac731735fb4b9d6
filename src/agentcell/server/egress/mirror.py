"""What the package mirrors (PyPI, npm) share at their door: GET and HEAD only, the sandbox's
policy checked before anything is fetched, and failures answered as plain text."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from agentcell.server.egress.fetch import FetchError
from agentcell.server.egress.http import RequestHead, send_text
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.egress.proxy import EgressDenied, check_allowed


async def serve_mirror(
    label: str,
    upstream: tuple[str, str, int],
    sandbox_id: str,
    policy: EgressPolicy,
    head: RequestHead,
    writer: asyncio.StreamWriter,
    route: Callable[[], Awaitable[None]],
) -> None:
    """`upstream`: (URL, host, port) the mirror fetches from; `route` answers an allowed request."""
    url, host, port = upstream
    if head.method not in ("GET", "HEAD"):
        await send_text(writer, 405, f"the {label} answers GET and HEAD only\n")
        return
    try:
        check_allowed(sandbox_id, policy, host, port)
        await route()
    except EgressDenied as e:  # answered and logged by the proxy, like its own denials
        raise EgressDenied(f"{e} (the {label} fetches from {url})", e.what) from None
    except FetchError as e:
        await send_text(writer, 502, f"agentcell {label}: {e}\n")
