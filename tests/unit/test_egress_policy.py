"""Egress policy: parsing allow entries (with messages that say what is wrong), matching names and
addresses, and the wire model's rules."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from agentcell.protocol.egress import NetworkPolicy, parse_allow_entry
from agentcell.server.egress.policy import EgressPolicy


def policy(*allow: str) -> EgressPolicy:
    return EgressPolicy.from_wire(NetworkPolicy(egress="allowlist", allow=list(allow)))


@pytest.mark.parametrize(
    ("text", "host", "wildcard", "network", "port"),
    [
        ("example.com", "example.com", False, None, None),
        ("Example.COM.", "example.com", False, None, None),
        ("*.example.com", "example.com", True, None, None),
        ("pypi.org:443", "pypi.org", False, None, 443),
        ("localhost", "localhost", False, None, None),
        ("10.0.0.0/8:443", None, False, "10.0.0.0/8", 443),
        ("127.0.0.1:8123", None, False, "127.0.0.1/32", 8123),
        ("192.168.1.7/24", None, False, "192.168.1.0/24", None),
        ("[::1]:8080", None, False, "::1/128", 8080),
        ("fd00::/8", None, False, "fd00::/8", None),
    ],
)
def test_entries_parse(
    text: str, host: str | None, wildcard: bool, network: str | None, port: int | None
) -> None:
    entry = parse_allow_entry(text)
    assert (entry.host, entry.wildcard, entry.port) == (host, wildcard, port)
    assert entry.network == (ipaddress.ip_network(network) if network else None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must not be empty"),
        ("10.0.0.0/33", "not a valid IP address or CIDR"),
        ("300.1.2.3", "not a valid IP address or CIDR"),
        ("1.2.3", "not a valid IP address or CIDR"),
        ("foo.*.com", "a wildcard may only be a whole leftmost label"),
        ("*example.com", "a wildcard may only be a whole leftmost label"),
        ("*.com", "would match a whole top-level domain"),
        ("example.com:0", "the port must be a number from 1 to 65535"),
        ("example.com:http", "the port must be a number from 1 to 65535"),
        ("exa_mple.com", "not a valid host name"),
        ("-bad.example.com", "not a valid host name"),
        ("[::1", "missing ']'"),
        ("[::1]8080", "expected ':<port>'"),
    ],
)
def test_bad_entries_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("[", r"\[")):
        parse_allow_entry(text)


def test_names_match_exactly_or_by_wildcard_and_port() -> None:
    rules = policy("example.com", "*.pkg.test", "api.test:443")
    assert rules.allows_name("example.com", 80) and rules.allows_name("EXAMPLE.com.", 1234)
    assert not rules.allows_name("www.example.com", 80)  # exact means exact
    assert rules.allows_name("a.pkg.test", 80) and rules.allows_name("a.b.pkg.test", 80)
    assert not rules.allows_name("pkg.test", 80)  # *.x does not include x itself
    assert not rules.allows_name("evilpkg.test", 80)
    assert rules.allows_name("api.test", 443) and not rules.allows_name("api.test", 80)


def test_addresses_match_networks_and_ports_never_names() -> None:
    rules = policy("10.0.0.0/8:443", "127.0.0.1:8123", "localhost")
    assert rules.allows_name("10.1.2.3", 443) and not rules.allows_name("10.1.2.3", 80)
    assert rules.allows_name("127.0.0.1", 8123) and not rules.allows_name("127.0.0.2", 8123)
    assert not rules.allows_address(ipaddress.ip_address("11.0.0.1"), 443)
    assert not rules.allows_name("::1", 8123)


def test_none_and_open() -> None:
    assert not EgressPolicy().allows_name("example.com", 443) and not EgressPolicy().has_proxy
    opened = EgressPolicy.from_wire(NetworkPolicy(egress="open"))
    assert opened.allows_name("anything.test", 1) and opened.has_proxy and opened.describe() == "open"


def test_open_with_deny_entries_refuses_those_addresses_only() -> None:
    opened = EgressPolicy.from_wire(
        NetworkPolicy(egress="open", deny=["203.0.113.0/24", "[2001:db8::1]:443"])
    )
    assert not opened.allows_address(ipaddress.ip_address("203.0.113.9"), 80)
    assert not opened.allows_name("203.0.113.9", 80)  # an address written as the name
    assert not opened.allows_address(ipaddress.ip_address("2001:db8::1"), 443)
    assert opened.allows_address(ipaddress.ip_address("2001:db8::1"), 80)  # only :443 is denied
    assert opened.allows_address(ipaddress.ip_address("198.51.100.7"), 80)
    assert opened.allows_name("example.test", 443)  # a name: its addresses are checked once resolved
    assert opened.describe() == "open (except 203.0.113.0/24, [2001:db8::1]:443)"
    assert EgressPolicy.from_record(opened.to_record()) == opened
    assert EgressPolicy.from_record({"kind": "open", "allow": []}) == EgressPolicy("open")  # (older records)


def test_records_round_trip_and_bad_records_are_none() -> None:
    rules = policy("*.example.com", "10.0.0.0/8:443")
    assert EgressPolicy.from_record(rules.to_record()) == rules
    assert EgressPolicy.from_record(None) == EgressPolicy()
    assert EgressPolicy.from_record({"kind": "sometimes"}) == EgressPolicy()


def test_describe_names_the_entries() -> None:
    assert policy("a.test", "10.0.0.0/8").describe() == "allowlist (a.test, 10.0.0.0/8)"
    many = policy(*(f"h{i}.test" for i in range(12)))
    assert many.describe().endswith("h9.test and 2 more)")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"egress": "sometimes"}, "Input should be 'none', 'allowlist' or 'open'"),
        ({"egress": "allowlist"}, "needs at least one allow entry"),
        ({"egress": "open", "allow": ["a.test"]}, "only used with egress 'allowlist'"),
        ({"egress": "allowlist", "allow": ["ok.test", "10.0.0.0/33"]}, "allow[1]: '10.0.0.0/33'"),
        ({"egress": "none", "extra": 1}, "Extra inputs are not permitted"),
        ({"egress": "open", "deny": ["example.com"]}, "deny[0]: 'example.com' is a name"),
        ({"egress": "open", "deny": ["10.0.0.0/33"]}, "deny[0]: '10.0.0.0/33'"),
        (
            {"egress": "allowlist", "allow": ["a.test"], "deny": ["10.0.0.1"]},
            "deny entries narrow egress 'open'",
        ),
    ],
)
def test_the_wire_model_refuses_bad_policies(body: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        NetworkPolicy.model_validate(body)
    assert message in str(caught.value)


def test_the_default_is_none() -> None:
    assert NetworkPolicy().egress == "none" and NetworkPolicy().allow == []
