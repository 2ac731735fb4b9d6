"""The gateway's HTTP/1.1 data-plane engine, in one import.

    from agentcell.server.gateway.http1 import GatewayServer, Forward, Respond, TcpUpstream

A lean asyncio front server and streaming reverse proxy (httptools parsing, callback-driven
protocols, pooled keep-alive upstream connections): `server.py` owns the listeners, `connection.py`
one client connection, `exchange.py` one proxied request, `upstream.py` the upstream side,
`asgi.py` an in-process ASGI app as the upstream, `headers.py` the header rewriting, `route.py`
the types the router deals in.
"""

from __future__ import annotations

from agentcell.server.gateway.headers import error_envelope
from agentcell.server.gateway.route import (
    AccessLog,
    AccessRecord,
    AppUpstream,
    CompletionCallback,
    ErrorResponder,
    Forward,
    NowaitRouter,
    RequestHead,
    Respond,
    Route,
    Router,
    SocketUpstream,
    TcpUpstream,
    UnixUpstream,
    UpstreamAddress,
)
from agentcell.server.gateway.server import GatewayServer

__all__ = [
    "AccessLog",
    "AccessRecord",
    "AppUpstream",
    "CompletionCallback",
    "ErrorResponder",
    "Forward",
    "GatewayServer",
    "NowaitRouter",
    "RequestHead",
    "Respond",
    "Route",
    "Router",
    "SocketUpstream",
    "TcpUpstream",
    "UnixUpstream",
    "UpstreamAddress",
    "error_envelope",
]
