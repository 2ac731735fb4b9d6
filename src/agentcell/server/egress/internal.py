"""Which addresses are the node's or its neighbours' rather than the public internet's: egress
`open` reaches the public internet only, so the proxy refuses these for it, whatever name led
there and however the address was spelt (an allowlist naming one explicitly still reaches it).

Refused: loopback, the unspecified address, link-local (169.254/16 and fe80::/10, where a cloud's
metadata service answers with the node's credentials), multicast, every address of the host's
own interfaces (asked of the kernel: `is_host_address`), and the private ranges a node's
neighbours live on (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7, fec0::/10). An IPv6
address that carries an IPv4 one to a gateway (IPv4-mapped, NAT64's 64:ff9b::/96, 6to4's
2002::/16) is judged as that IPv4 address.
"""

from __future__ import annotations

import ipaddress

from agentcell.server.egress.hostaddr import is_host_address
from agentcell.server.egress.policy import IPAddress, reached

PRIVATE_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network": connect(2) takes 0.x for the host itself
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # carrier-grade NAT, and some clouds' internal networks
        "fc00::/7",  # unique local
        "fec0::/10",  # site-local (deprecated, still routed by some)
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def internal_reason(address: IPAddress) -> str | None:
    """Why `address` is not the public internet (a few words for the denial), or None if it is."""
    address = embedded_ipv4(address)
    private = next((network for network in PRIVATE_NETWORKS if address in network), None)
    if private is not None:
        return _local_reason(address) or f"a private network, {private}"
    return node_reason(address)


def node_reason(address: IPAddress) -> str | None:
    """Why `address` leads to this node itself (loopback, link-local, multicast, any address of
    its interfaces), or None: what a name allowed by name must not resolve to either."""
    address = embedded_ipv4(address)
    if (local := _local_reason(address)) is not None:
        return local
    return "an address of this host" if is_host_address(address) else None


def _local_reason(address: IPAddress) -> str | None:
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "link-local, where the cloud metadata service answers"
    if address.is_multicast:
        return "multicast"
    return None


def embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one reaches through a translator (or `address` itself)."""
    address = reached(address)
    if isinstance(address, ipaddress.IPv6Address):
        if address in NAT64:
            return ipaddress.IPv4Address(address.packed[-4:])
        if address.sixtofour is not None:
            return address.sixtofour
    return address
