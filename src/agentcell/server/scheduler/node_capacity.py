"""NodeCapacity: the sandboxes and function instances this node runs at once, together capped.

Both are process sandboxes on the same driver (namespaces, cgroups, a few of the server's file
descriptors each), so `max_sandboxes` (AGENTCELL_MAX_SANDBOXES) bounds their sum: a per-function
`max_instances` and the tenants' quotas bound one function or one tenant, not the machine. One
instance, made in app.py, is shared by the sandbox service and the function scheduler: each takes a
slot before it spawns (so a slot covers a start in progress) and gives it back once the sandbox or
instance is gone, or its start failed. Instances a restarted server re-adopts take theirs unchecked.
Paused sandboxes hold no process and no slot.

The sandbox pool's idle instances hold no slot: they live in the room the slots leave (`room`), and
a spawn about to start on a node without room stops them first (`make_room`), so that they never
take the place of a live sandbox or instance.
"""

from __future__ import annotations

import sys
from typing import Literal, Protocol

from agentcell.errors import QuotaExceeded, Unavailable
from agentcell.server.observability.registry import Registry

Kind = Literal["sandbox", "instance"]
KINDS: tuple[Kind, ...] = ("sandbox", "instance")


class NodeFull(Unavailable):
    """No room on the node for a new function instance (503, retry later)."""


class Spare(Protocol):
    """Idle instances that live ones displace: the sandbox pool."""

    async def make_room(self) -> None:
        """Stop idle instances until they fit in the room the node's slots leave."""

    def room_freed(self) -> None:
        """A slot was given back: the idle instances may grow into it."""


class NodeCapacity:
    """At most `limit` sandboxes and function instances at once: `take` before a spawn, `give`
    once it is gone (each exactly once per slot taken)."""

    def __init__(self, limit: int | None = None, registry: Registry | None = None) -> None:
        """`limit`: AGENTCELL_MAX_SANDBOXES (None: unlimited, for a service tested alone)."""
        self.limit = sys.maxsize if limit is None else limit
        self.held: dict[Kind, int] = dict.fromkeys(KINDS, 0)
        self.spare: Spare | None = None
        """the sandbox pool, when the node has one (set by the sandbox service)"""
        if registry is not None:
            self._register(registry)

    @property
    def used(self) -> int:
        return sum(self.held.values())

    def room(self) -> int:
        """How many more sandboxes or instances fit (negative after adopting more than fit)."""
        return self.limit - self.used

    def take(self, kind: Kind) -> None:
        """One slot, or the error of a full node: for a sandbox create, QuotaExceeded (429, as
        at this maximum ever since); for a new function instance, NodeFull (503)."""
        if self.room() <= 0:
            raise self._full(kind)
        self.held[kind] += 1

    def take_unchecked(self, kind: Kind) -> None:
        """A slot for what runs already (an instance re-adopted after a restart): never refused."""
        self.held[kind] += 1

    def give(self, kind: Kind) -> None:
        self.held[kind] = max(0, self.held[kind] - 1)
        if self.spare is not None:
            self.spare.room_freed()

    async def make_room(self) -> None:
        """Stop idle pooled instances that no longer fit (called by a spawn holding its slot)."""
        if self.spare is not None:
            await self.spare.make_room()

    def _full(self, kind: Kind) -> QuotaExceeded | NodeFull:
        running = f"{self.held['sandbox']} sandbox(es) and {self.held['instance']} function instance(s)"
        limit = (
            f"this node runs at most {self.limit} sandboxes and function instances together "
            f"(AGENTCELL_MAX_SANDBOXES) and is full: {running}"
        )
        if kind == "sandbox":
            return QuotaExceeded(
                f"{limit}; kill or pause a sandbox, or end a session, first", retry_after_s=1
            )
        return NodeFull(
            f"no room for a new function instance: {limit}; retry once a sandbox or session ends",
            retry_after_s=1,
        )

    def _register(self, registry: Registry) -> None:
        registry.gauge(
            "agentcell_node_capacity_used",
            "Slots of AGENTCELL_MAX_SANDBOXES held, by what holds them (running or starting sandboxes"
            " and function instances; idle pooled sandboxes hold none)",
            ("kind",),
            lambda: [((kind,), float(n)) for kind, n in self.held.items()],
        )
        registry.gauge(
            "agentcell_node_capacity_limit",
            "Sandboxes and function instances this node runs at once (AGENTCELL_MAX_SANDBOXES)",
            (),
            lambda: [((), float(self.limit))],
        )
