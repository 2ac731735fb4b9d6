"""Placement: which instance takes a request or a session, when to start one more, and which
instances are idle. Pure decisions over one function's in-memory state; the Scheduler acts on them."""

from __future__ import annotations

from agentcell.server.scheduler.functions import FunctionState
from agentcell.server.scheduler.instances import Instance


def free_instance(fn: FunctionState) -> Instance | None:
    """`affinity: none`: the least busy ready instance of the latest version with room for one
    more concurrent request."""
    limit = fn.config.concurrency_per_instance
    free = [
        i
        for i in fn.instances.values()
        if i.is_ready and i.version == fn.latest.version and i.in_flight < limit
    ]
    return min(free, key=lambda i: i.in_flight, default=None)


def needs_instance(fn: FunctionState) -> bool:
    """Scale out by concurrency: start one more instance unless those already starting can take
    this request and every request already waiting (and never past max_instances)."""
    live = fn.live_instances()
    if len(live) >= fn.config.max_instances:
        return False
    starting = sum(1 for i in live if i.state == "starting")
    return starting * fn.config.concurrency_per_instance <= fn.waiting


def find_room(fn: FunctionState) -> Instance | None:
    """A slot for a new session: a shared instance with room (sessions_per_instance > 1), else a
    warm one taken out of the pool; None when a new instance is needed."""
    per_instance = fn.config.sessions_per_instance
    if per_instance > 1:
        shared = [
            i
            for i in fn.instances.values()
            if i.version == fn.latest.version and i.sessions and i.has_room(per_instance)
        ]
        if shared:
            return min(shared, key=lambda i: (not i.is_ready, len(i.sessions)))
    while fn.warm:
        instance = fn.warm.pop(0)
        if instance.is_live and not instance.sessions and instance.version == fn.latest.version:
            return instance
    return None


def idle_instances(fn: FunctionState, now: float) -> list[Instance]:
    """Spare instances to stop at `now`: old versions at once, the latest after idle_timeout_s,
    keeping the min_warm most recently used."""
    spare = [i for i in fn.instances.values() if i.is_ready and not i.sessions and i.in_flight == 0]
    keep = fn.config.min_warm
    idle: list[Instance] = []
    for instance in sorted(spare, key=lambda i: -i.last_used_at):
        if instance.version == fn.latest.version and keep > 0:
            keep -= 1
        elif instance.version != fn.latest.version or now - instance.last_used_at >= fn.config.idle_timeout_s:
            idle.append(instance)
    return idle
