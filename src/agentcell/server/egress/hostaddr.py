"""Whether an address is this host's own, as the kernel's routing table says at the moment of asking.

The egress proxy connects out from the host's network namespace, so a connection to any address
of any of the host's interfaces (eth0's, a bridge's, a VPN's, one added a minute ago) reaches the
host itself, like one to loopback. Rather than keep a list of addresses that goes stale, each
question is one `RTM_GETROUTE` request over rtnetlink, the lookup `ip route get <address>` makes:
the destination is the host's own when the route found is of type `local` (every interface
address, v4 and v6, the whole 127.0.0.0/8, 0.0.0.0 and any `local` route an operator added).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct

from agentcell.server.egress.policy import IPAddress, reached

log = logging.getLogger(__name__)

RTM_NEWROUTE = 24
RTM_GETROUTE = 26
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
RTA_DST = 1
RTN_LOCAL = 2
_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")  # length, type
_RTM_TYPE_OFFSET = _NLMSG_HEADER.size + 7


def is_host_address(address: IPAddress) -> bool:
    """True when a connection to `address` would be delivered to this host itself.

    Fails closed: when the kernel cannot be asked (no rtnetlink), every address counts as the
    host's own, so the caller refuses rather than lets a connection through unchecked."""
    address = reached(address)  # ::ffff:127.0.0.1 is 127.0.0.1, which the IPv6 table does not know
    if address.is_loopback or address.is_unspecified:
        return True  # `::` is not a local route, yet connect(2) takes it for ::1
    try:
        return _route_type(address) == RTN_LOCAL
    except OSError as e:
        log.warning("cannot ask the kernel whether %s is this host's address, assuming it is: %s", address, e)
        return True


def _route_type(address: IPAddress) -> int | None:
    """The `rtm_type` of the route to `address` (RTN_LOCAL, RTN_UNICAST, ...); None: no route."""
    family = socket.AF_INET if isinstance(address, ipaddress.IPv4Address) else socket.AF_INET6
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(1.0)
        sock.send(_route_request(family, address.packed))
        reply = sock.recv(65536)
    if len(reply) <= _RTM_TYPE_OFFSET:
        raise OSError(f"short rtnetlink reply ({len(reply)} bytes)")
    _, kind, _, _, _ = _NLMSG_HEADER.unpack_from(reply)
    if kind == NLMSG_ERROR:
        return None  # no route at all (ENETUNREACH, a `prohibit` route): not delivered here
    if kind != RTM_NEWROUTE:
        raise OSError(f"unexpected rtnetlink reply type {kind}")
    return reply[_RTM_TYPE_OFFSET]


def _route_request(family: int, packed: bytes) -> bytes:
    body = _RTMSG.pack(family, len(packed) * 8, 0, 0, 0, 0, 0, 0, 0)
    body += _RTATTR.pack(_RTATTR.size + len(packed), RTA_DST) + packed  # 4 or 16 bytes: aligned
    return _NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, 1, 0) + body
