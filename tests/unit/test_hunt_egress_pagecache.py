"""The package mirrors' memory is bounded: pages and the links they carry, by bytes and age."""

from __future__ import annotations

from agentcell.server.clock import FakeClock
from agentcell.server.egress.cache import Artifact
from agentcell.server.egress.pagecache import LINK_OVERHEAD_BYTES, PageCache


def link(name: str) -> Artifact:
    return Artifact(f"https://files.example.test/{name}.whl")


def test_the_least_recently_used_pages_go_past_the_budget_with_their_links() -> None:
    one = len(link("a").url) + LINK_OVERHEAD_BYTES + 4
    pages = PageCache(FakeClock(), ttl_s=300, max_bytes=2 * one)
    pages.put("a", b"aaaa", [link("a")])
    pages.put("b", b"bbbb", [link("b")])
    assert pages.get("a") == b"aaaa"  # now b is the least recently used
    pages.put("c", b"cccc", [link("c")])
    assert (pages.get("a"), pages.get("b"), pages.get("c")) == (b"aaaa", None, b"cccc")
    assert pages.artifact(link("b").key) is None and pages.artifact(link("c").key) == link("c")
    assert pages.size_bytes == 2 * one
    pages.put("huge", b"x" * (2 * one + 1), [])  # larger than the whole budget: served, never kept
    assert pages.get("huge") is None and len(pages) == 2


def test_an_expired_page_is_fetched_again_but_its_links_stay_known_until_replaced() -> None:
    clock = FakeClock()
    pages = PageCache(clock, ttl_s=300, max_bytes=10_000)
    pages.put("a", b"old", [link("a1"), link("shared")])
    pages.put("b", b"b", [link("shared")])
    clock.advance(300)
    assert pages.get("a") is None and pages.artifact(link("a1").key) == link("a1")
    pages.put("a", b"new", [link("a2")])
    assert pages.get("a") == b"new" and pages.artifact(link("a1").key) is None
    assert pages.artifact(link("shared").key) == link("shared")  # page b still links to it
