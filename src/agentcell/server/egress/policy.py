"""EgressPolicy: the node's view of a sandbox's network policy, and the questions it answers."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from agentcell.protocol.egress import AllowEntry, EgressKind, NetworkPolicy, parse_allow_entry

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    kind: EgressKind = "none"
    entries: tuple[AllowEntry, ...] = ()
    denied: tuple[AllowEntry, ...] = ()
    """for `open`: addresses and networks it may not reach"""

    @classmethod
    def from_wire(cls, policy: NetworkPolicy) -> EgressPolicy:
        return cls(policy.egress, policy.entries(), policy.denied())

    @classmethod
    def from_record(cls, record: object) -> EgressPolicy:
        """From `to_record()` output (a state file); anything unreadable is `none`."""
        if not isinstance(record, dict) or record.get("kind") not in ("allowlist", "open"):
            return cls()
        return cls(record["kind"], _entries(record.get("allow")), _entries(record.get("deny")))

    def to_record(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "allow": [e.text for e in self.entries],
            "deny": [e.text for e in self.denied],
        }

    @property
    def has_proxy(self) -> bool:
        """`none` gets no proxy at all: the sandbox has loopback only and nothing to ask."""
        return self.kind != "none"

    def allows_name(self, name: str, port: int) -> bool:
        """May the sandbox reach `name:port`? An IP literal is matched as an address; a name is
        matched before it is resolved, so a denied name is never looked up. (`open` allows every
        name here; the proxy refuses what it resolves to if that is not the public internet, or
        is denied.)"""
        if self.kind == "none":
            return False
        address = parse_address(name)
        if address is not None:
            return self.allows_address(address, port)
        return self.kind == "open" or any(e.matches_name(name, port) for e in self.entries)

    def allows_address(self, address: IPAddress, port: int) -> bool:
        if self.kind == "open":
            return not any(e.matches_address(address, port) for e in self.denied)
        return self.kind == "allowlist" and any(e.matches_address(address, port) for e in self.entries)

    def describe(self) -> str:
        if self.kind == "allowlist":
            return f"allowlist ({_shown(self.entries)})"
        if self.kind == "open" and self.denied:
            return f"open (except {_shown(self.denied)})"
        return self.kind


def _shown(entries: tuple[AllowEntry, ...]) -> str:
    shown = ", ".join(e.text for e in entries[:10])
    return shown + (f" and {len(entries) - 10} more" if len(entries) > 10 else "")


def _entries(texts: object) -> tuple[AllowEntry, ...]:
    return tuple(parse_allow_entry(str(t)) for t in texts) if isinstance(texts, list) else ()


def parse_address(host: str) -> IPAddress | None:
    try:
        return reached(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def reached(address: IPAddress) -> IPAddress:
    """The address a connection to `address` really reaches: an IPv4-mapped IPv6 address
    (`::ffff:127.0.0.1`) is the IPv4 one, and every check must see it as such."""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


NO_EGRESS = EgressPolicy()
"""the default: loopback only"""
