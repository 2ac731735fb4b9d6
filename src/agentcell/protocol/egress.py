"""Network egress policy as it travels on the wire, and the parser of its allow entries.

An allow entry names where a sandbox may connect to, with an optional port:

    example.com           that host, any port
    *.example.com         any subdomain of example.com (not example.com itself), any port
    pypi.org:443          that host, port 443 only
    10.0.0.0/8:443        any address in the network, port 443
    127.0.0.1:8123        one address, one port
    [fd00::1]:443         IPv6 with a port needs brackets; fd00::/8 without a port does not

Parsing is pure (no DNS): the server matches names before it resolves them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from agentcell.protocol.common import WireModel

EgressKind = Literal["none", "allowlist", "open"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_ALLOW_ENTRIES = 256
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """One parsed allow entry: a host name (exact or `*.` wildcard) or an IP network, and a port."""

    text: str
    host: str | None = None
    """lower-case name without a trailing dot; for a wildcard, the suffix after `*.`"""
    wildcard: bool = False
    network: IPNetwork | None = None
    port: int | None = None
    """None: any port"""

    def matches_name(self, name: str, port: int) -> bool:
        if self.host is None or not self._port_ok(port):
            return False
        name = name.lower().rstrip(".")
        return name.endswith("." + self.host) if self.wildcard else name == self.host

    def matches_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
        return self.network is not None and self._port_ok(port) and address in self.network

    def _port_ok(self, port: int) -> bool:
        return self.port is None or self.port == port


def parse_allow_entry(text: str) -> AllowEntry:
    """Parse one allow entry; ValueError says what is wrong with it and what would be right."""
    entry = text.strip()
    if not entry:
        raise ValueError("an allow entry must not be empty")
    host, port = _split_port(entry)
    network = _parse_network(host)
    if network is not None:
        return AllowEntry(text=entry, network=network, port=port)
    name = host.lower().rstrip(".")
    wildcard = name.startswith("*.")
    if wildcard:
        name = name[2:]
    if "*" in name:
        raise ValueError(f"{text!r}: a wildcard may only be a whole leftmost label, as in '*.example.com'")
    if "/" in name or _looks_numeric(name):
        raise ValueError(f"{text!r} is neither a host name nor a valid IP address or CIDR network")
    if not _HOSTNAME.fullmatch(name) or len(name) > 253:
        raise ValueError(f"{text!r} is not a valid host name (letters, digits, '-' and '.')")
    if wildcard and "." not in name:
        raise ValueError(f"{text!r} would match a whole top-level domain; name at least two labels")
    return AllowEntry(text=entry, host=name, wildcard=wildcard, port=port)


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        host, sep, rest = entry[1:].partition("]")
        if not sep:
            raise ValueError(f"{entry!r}: missing ']' after the IPv6 address")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"{entry!r}: expected ':<port>' after ']'")
        return host, _parse_port(entry, rest[1:])
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, _parse_port(entry, port)
    return entry, None  # no port, or a bare IPv6 address / network


def _parse_port(entry: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{entry!r}: the port must be a number from 1 to 65535, got {text!r}")
    return int(text)


def _parse_network(host: str) -> IPNetwork | None:
    if "/" not in host and not _looks_numeric(host) and ":" not in host:
        return None
    try:
        return ipaddress.ip_network(host, strict=False)
    except ValueError as e:
        raise ValueError(f"{host!r} is not a valid IP address or CIDR network: {e}") from None


def _looks_numeric(host: str) -> bool:
    return bool(host) and all(c.isdigit() or c in "./" for c in host)


class NetworkPolicy(WireModel):
    """Where a sandbox's processes may connect to outside the sandbox."""

    egress: EgressKind = Field(
        default="none",
        description="none: no route out, no names resolve; allowlist: only the `allow` entries, "
        "through the node's egress proxy; open: anywhere, through the node's egress proxy",
    )
    allow: list[Annotated[str, StringConstraints(min_length=1, max_length=300)]] = Field(
        default_factory=list,
        max_length=MAX_ALLOW_ENTRIES,
        description="for allowlist: host names, '*.' wildcards, IPs or CIDRs, each with an optional ':port'",
    )
    deny: list[Annotated[str, StringConstraints(min_length=1, max_length=300)]] = Field(
        default_factory=list,
        max_length=MAX_ALLOW_ENTRIES,
        description="for open: IPs or CIDRs (each with an optional ':port') it may not reach, "
        "whatever name leads there",
    )

    @field_validator("allow")
    @classmethod
    def _entries_parse(cls, allow: list[str]) -> list[str]:
        return _checked("allow", allow, parse_allow_entry)

    @field_validator("deny")
    @classmethod
    def _deny_entries_are_addresses(cls, deny: list[str]) -> list[str]:
        return _checked("deny", deny, _parse_deny_entry)

    @model_validator(mode="after")
    def _deny_fits_kind(self) -> NetworkPolicy:
        if self.deny and self.egress != "open":
            raise ValueError(
                f"deny entries narrow egress 'open'; {self.egress!r} already denies what it does not allow"
            )
        return self

    @model_validator(mode="after")
    def _allow_fits_kind(self) -> NetworkPolicy:
        if self.egress == "allowlist" and not self.allow:
            raise ValueError("egress 'allowlist' needs at least one allow entry (or use egress 'none')")
        if self.egress != "allowlist" and self.allow:
            raise ValueError(f"allow entries are only used with egress 'allowlist', not {self.egress!r}")
        return self

    def entries(self) -> tuple[AllowEntry, ...]:
        return tuple(parse_allow_entry(text) for text in self.allow)

    def denied(self) -> tuple[AllowEntry, ...]:
        return tuple(parse_allow_entry(text) for text in self.deny)


def _parse_deny_entry(text: str) -> AllowEntry:
    entry = parse_allow_entry(text)
    if entry.network is None:
        raise ValueError(f"{text!r} is a name; deny entries are IPs or CIDRs (a name could resolve anywhere)")
    return entry


def _checked(field: str, texts: list[str], parse: Callable[[str], AllowEntry]) -> list[str]:
    """The entries stripped, once each parses; else a ValueError naming each bad one (8 at most)."""
    problems = []
    for index, text in enumerate(texts):
        try:
            parse(text)
        except ValueError as e:
            problems.append(f"{field}[{index}]: {e}")
    if problems:
        raise ValueError("; ".join(problems[:8]))
    return [text.strip() for text in texts]
