"""EgressProxy: one HTTP(S) forward proxy per sandbox, on a listening socket the driver opened
inside the sandbox's network namespace (127.0.0.1:<port> there), served by the server's own event
loop and connecting out from the host's namespace.

A sandbox's own network has loopback only, so anything that does not ask the proxy fails at once
(ENETUNREACH; names do not resolve). Through the proxy, `CONNECT host:port` (https and any TCP)
and absolute-URI requests (`GET http://host/...`) are checked against the sandbox's policy before
the name is resolved; a denied request gets `403` with a body that names the policy, and is logged
with the sandbox id. `open` reaches the public internet only: once resolved, an address of the
node, of loopback, link-local or a private network is refused (internal.py). Origin-form requests
(`GET /pypi/...`) go to the node's local services (the package mirrors), which apply the same
policy to what they fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agentcell.server.clock import Clock, SystemClock
from agentcell.server.egress.denials import DenialLog
from agentcell.server.egress.hostaddr import is_host_address
from agentcell.server.egress.http import (
    MAX_HEAD_BYTES,
    BadRequest,
    RequestHead,
    origin_head,
    parse_absolute_target,
    read_request_head,
    send_text,
    split_authority,
)
from agentcell.server.egress.internal import internal_reason, node_reason
from agentcell.server.egress.policy import EgressPolicy, IPAddress, parse_address
from agentcell.server.egress.resolver import Resolver

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 30.0
PUMP_BYTES = 256 << 10
DENIED_HEADER = {"X-Agentcell-Egress": "denied"}


class LocalService(Protocol):
    """Something the proxy serves itself, under a path prefix, to origin-form requests."""

    prefix: str

    async def handle(
        self, sandbox_id: str, policy: EgressPolicy, head: RequestHead, writer: asyncio.StreamWriter
    ) -> None: ...


class EgressDenied(Exception):
    """The policy refuses this destination; the message is what the sandbox is told, `what` the
    destination the server's log names."""

    def __init__(self, message: str, what: str) -> None:
        super().__init__(message)
        self.what = what


@dataclass(slots=True)
class _Proxied:
    """One sandbox's proxy: its policy, its listening server and the connections it carries."""

    sandbox_id: str
    policy: EgressPolicy
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closing: bool = False


class EgressProxy:
    """The node's egress proxy for every sandbox whose policy is not `none`."""

    def __init__(
        self,
        services: Sequence[LocalService] = (),
        *,
        connect_timeout_s: float = 10.0,
        max_connections: int = 256,
        max_total_connections: int = 4096,
        protected_ports: Sequence[int] = (),
        clock: Clock | None = None,
    ) -> None:
        """`max_connections` per sandbox, `max_total_connections` for all sandboxes together
        (each holds up to two of the server's file descriptors, which its API and every other
        sandbox need too); `protected_ports`: ports of this host (the server's own API) that no
        policy but an allowlist naming the address itself may reach at any of this host's own
        addresses."""
        self._services = tuple(services)
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._max_total = max_total_connections
        self._total = 0
        self._protected_ports = set(protected_ports)
        self._sandboxes: dict[str, _Proxied] = {}
        self._resolver = Resolver()
        self._denials = DenialLog(clock or SystemClock())

    async def serve(self, sandbox_id: str, policy: EgressPolicy, listener: socket.socket) -> None:
        """Start answering on `listener` (a listening socket; the proxy now owns it)."""
        proxied = _Proxied(sandbox_id, policy)
        try:
            proxied.server = await asyncio.start_server(
                lambda r, w: self._handle(proxied, r, w), sock=listener, limit=MAX_HEAD_BYTES
            )
        except BaseException:
            listener.close()
            raise
        self._sandboxes[sandbox_id] = proxied

    def protect(self, ports: Sequence[int]) -> None:
        """Protect more of this host's ports from now on (a server started on port 0 learns its
        own only once it listens)."""
        self._protected_ports.update(ports)

    @property
    def open_connections(self) -> int:
        """Proxied connections of all sandboxes now open."""
        return self._total

    def is_serving(self, sandbox_id: str) -> bool:
        return sandbox_id in self._sandboxes

    async def close(self, sandbox_id: str) -> None:
        """Stop listening for the sandbox and cut its open connections. Idempotent."""
        proxied = self._sandboxes.pop(sandbox_id, None)
        self._resolver.forget(sandbox_id)
        self._denials.forget(sandbox_id)
        if proxied is None or proxied.server is None:
            return
        proxied.closing = True
        proxied.server.close()
        for writer in list(proxied.writers):
            writer.close()
        # A connection still resolving, connecting or waiting on a silent upstream would outlive
        # the sandbox (and hold its upstream socket and a slot of the node's budget) otherwise.
        for task in list(proxied.tasks):
            task.cancel()
        if proxied.tasks:
            await asyncio.wait(list(proxied.tasks), timeout=1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proxied.server.wait_closed(), 1.0)

    async def aclose(self) -> None:
        for sandbox_id in list(self._sandboxes):
            await self.close(sandbox_id)

    # ------------------------------------------------------------------ one connection

    async def _handle(
        self, proxied: _Proxied, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        refusal = self._over_limit(proxied)
        if refusal is not None:
            log.warning("sandbox %s: egress connection refused: %s", proxied.sandbox_id, refusal)
            with contextlib.suppress(ConnectionError):
                await send_text(writer, 503, f"agentcell egress proxy: {refusal}\n")
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        proxied.writers.add(writer)
        proxied.tasks.add(task)
        self._total += 1
        try:
            await self._serve_connection(proxied, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            if not proxied.closing:
                raise
            # cut by close(): the task ends here (nothing awaits it, and Python 3.11's
            # start_server would log a cancelled connection task as an error)
        except Exception:
            log.exception("sandbox %s: egress proxy connection failed", proxied.sandbox_id)
        finally:
            self._total -= 1
            proxied.writers.discard(writer)
            proxied.tasks.discard(task)
            writer.close()

    def _over_limit(self, proxied: _Proxied) -> str | None:
        if len(proxied.writers) >= self._max_connections:
            return f"this sandbox holds {self._max_connections} proxied connections, its limit"
        if self._total >= self._max_total:
            return f"the node's sandboxes hold {self._max_total} proxied connections, its limit; retry later"
        return None

    async def _serve_connection(
        self, proxied: _Proxied, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await asyncio.wait_for(read_request_head(reader), HEAD_TIMEOUT_S)
            if head is None:
                return
            if head.method == "CONNECT":
                await self._tunnel(proxied, head, reader, writer)
            elif head.target.startswith("/"):
                await self._local(proxied, head, writer)
            else:
                await self._forward(proxied, head, reader, writer)
        except BadRequest as e:
            await send_text(writer, 400, f"agentcell egress proxy: {e}\n")
        except EgressDenied as e:
            self._denials.record(proxied.sandbox_id, proxied.policy.kind, e.what)
            await send_text(writer, 403, f"{e}\n", DENIED_HEADER)
        except UpstreamError as e:
            await send_text(writer, 502, f"agentcell egress proxy: {e}\n")

    async def _tunnel(
        self, proxied: _Proxied, head: RequestHead, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, port = split_authority(head.target, 443)
        up_reader, up_writer = await self._open_upstream(proxied, host, port)
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await _splice(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()

    async def _forward(
        self, proxied: _Proxied, head: RequestHead, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        target = parse_absolute_target(head.target)
        up_reader, up_writer = await self._open_upstream(proxied, target.host, target.port)
        request_body = None
        try:
            up_writer.write(origin_head(head, target.path))
            request_body = asyncio.ensure_future(_pump(reader, up_writer))
            await _pump(up_reader, writer)  # the origin closes after its response
        finally:
            if request_body is not None:
                request_body.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await request_body
            up_writer.close()

    async def _local(self, proxied: _Proxied, head: RequestHead, writer: asyncio.StreamWriter) -> None:
        for service in self._services:
            if head.target.startswith(service.prefix):
                await service.handle(proxied.sandbox_id, proxied.policy, head, writer)
                return
        prefixes = ", ".join(s.prefix for s in self._services) or "none"
        await send_text(
            writer,
            404,
            f"agentcell egress proxy: no local service at {head.target[:100]!r} "
            f"(served here: {prefixes}); to go out, use this address as an HTTP proxy\n",
        )

    # ------------------------------------------------------------------ going out

    async def _open_upstream(
        self, proxied: _Proxied, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        check_allowed(proxied.sandbox_id, proxied.policy, host, port)
        addresses = await self._resolve(proxied.sandbox_id, host, port)
        check_resolved(proxied.sandbox_id, proxied.policy, host, port, addresses)
        self._check_protected(proxied, port, addresses)
        check_public(proxied.sandbox_id, proxied.policy, host, port, addresses)
        last: OSError | None = None
        for address in addresses:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(str(address), port, limit=PUMP_BYTES), self._connect_timeout_s
                )
            except TimeoutError:
                last = TimeoutError(f"no answer within {self._connect_timeout_s:g} s")
            except OSError as e:
                last = e
        raise UpstreamError(f"cannot connect to {host}:{port}: {last}")

    def _check_protected(self, proxied: _Proxied, port: int, addresses: list[IPAddress]) -> None:
        """The server's own API is never reachable through `open`, nor through a name, nor through
        a catch-all network, at any address of this host: loopback, 0.0.0.0 and every address of
        every interface (a server bound to 0.0.0.0 answers on all of them). Only an allow entry
        naming the address itself (or a loopback network, for a loopback address) opens it."""
        if port not in self._protected_ports:
            return
        for address in addresses:
            if is_host_address(address) and not _names_itself(proxied.policy, address, port):
                what = f"{address}:{port} (the agentcell server itself or a backend of it)"
                raise deny(proxied.sandbox_id, proxied.policy, what)

    async def _resolve(self, sandbox_id: str, host: str, port: int) -> list[IPAddress]:
        literal = parse_address(host)
        if literal is not None:
            return [literal]
        try:
            return await asyncio.wait_for(
                self._resolver.resolve(sandbox_id, host, port), self._connect_timeout_s
            )
        except TimeoutError:
            raise UpstreamError(
                f"cannot resolve {host}: no answer within {self._connect_timeout_s:g} s"
            ) from None
        except OSError as e:
            raise UpstreamError(f"cannot resolve {host}: {e}") from None


class UpstreamError(Exception):
    """The destination was allowed but could not be reached; the sandbox gets a 502."""


def deny(sandbox_id: str, policy: EgressPolicy, what: str) -> EgressDenied:
    """The denial to raise; the proxy answers it and logs it (see DenialLog)."""
    return EgressDenied(
        f"agentcell: egress to {what} is denied by this sandbox's network policy: {policy.describe()}", what
    )


def check_allowed(sandbox_id: str, policy: EgressPolicy, host: str, port: int) -> None:
    if not policy.allows_name(host, port):
        raise deny(sandbox_id, policy, f"{host}:{port}")


def check_resolved(
    sandbox_id: str, policy: EgressPolicy, host: str, port: int, addresses: list[IPAddress]
) -> None:
    """A name allowed by name must not lead to the host itself (loopback, or any address of any
    of its interfaces: a service bound to 0.0.0.0 answers on each) nor to link-local addresses
    (a DNS answer is not the operator's word); listing the address itself allows it."""
    if policy.kind != "allowlist" or parse_address(host) is not None:
        return
    for address in addresses:
        if node_reason(address) is not None and not policy.allows_address(address, port):
            raise deny(
                sandbox_id, policy, f"{host}:{port} (it resolves to {address}; list that address to allow it)"
            )


def check_public(
    sandbox_id: str, policy: EgressPolicy, host: str, port: int, addresses: list[IPAddress]
) -> None:
    """`open` reaches the public internet, not the node: an address of the host, of loopback,
    link-local, multicast or a private network is refused, whether written literally (in any
    spelling: it is checked once parsed or resolved) or reached through a name; so is one in a
    `deny` entry of the policy (a name is refused if any of its addresses is)."""
    if policy.kind != "open":
        return
    literal = parse_address(host)
    for address in addresses:
        if not policy.allows_address(address, port):
            that = "" if literal is not None and str(address) == host.strip("[]") else f"that is {address}, "
            raise deny(sandbox_id, policy, f"{host}:{port} ({that}in a deny entry)")
        reason = internal_reason(address)
        if reason is None:
            continue
        if literal is None:
            reason = f"it resolves to {address}, {reason}"
        elif str(address) != host.strip("[]"):
            reason = f"that is {address}, {reason}"
        raise deny(
            sandbox_id,
            policy,
            f"{host}:{port} ({reason}; 'open' reaches the public internet only, "
            "an allowlist naming the address reaches it)",
        )


def _names_itself(policy: EgressPolicy, address: IPAddress, port: int) -> bool:
    """Does an allow entry name `address` itself: a single address, or a loopback network?"""
    return policy.kind == "allowlist" and any(
        e.network is not None
        and (e.network.num_addresses == 1 or e.network.is_loopback)
        and e.matches_address(address, port)
        for e in policy.entries
    )


async def _splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until both sides have finished; if either side fails, stop both."""
    tasks = [asyncio.ensure_future(_pump(reader, up_writer)), asyncio.ensure_future(_pump(up_reader, writer))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # raises the failure, if any
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the other side."""
    while data := await reader.read(PUMP_BYTES):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof() and not writer.is_closing():
        with contextlib.suppress(OSError):
            writer.write_eof()
