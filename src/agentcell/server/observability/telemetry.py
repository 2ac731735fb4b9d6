"""Telemetry: the hooks the gateway, scheduler and API call at instrumented points, feeding the
metric families agentcell exports and, when tracing is on, OpenTelemetry spans.

Every hook is cheap on the warm path: a dict lookup for a child made once, then integer and
float updates. `NullTelemetry` (AGENTCELL_METRICS=false and no tracing) has the same hooks doing
nothing. Gauges (sessions, instances, warm pools, sandboxes) are not updated here at all: the API
layer registers readers that count the scheduler's in-memory state when /metrics is scraped.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from agentcell.server.observability.registry import Histogram, Registry
from agentcell.server.observability.tracing import Tracing, start_tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

PHASES = ("claim", "sandbox_spawn", "server_listen", "initialize_hook", "restore", "first_byte")
"""Phases of a start, in order: placing a session on an instance (warm or new), spawning the
sandbox, its server listening on $PORT, the initialize hook, restoring the session's workspace,
and the first response byte of a request that had to wait for any of these."""

STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")

CompletionCallback = Callable[[int, int, int, float], None]
HeadHook = Callable[[int, Sequence[tuple[bytes, bytes]]], None]


class RequestLike(Protocol):
    """What tracing reads of a request head (the gateway's RequestHead)."""

    @property
    def method(self) -> bytes: ...

    @property
    def request_id(self) -> str: ...


_parent_span: contextvars.ContextVar[Span | None] = contextvars.ContextVar("agentcell_span", default=None)
"""The live span of the task's work (a routed request, a session start), for spans nested in it."""


def _status_index(status: int) -> int:
    index = status // 100
    return index if 1 <= index <= 5 else 0


class Telemetry:
    def __init__(self, registry: Registry, tracing: Tracing | None = None) -> None:
        self.registry = registry
        self.tracing = tracing
        self._requests = registry.histogram(
            "agentcell_gateway_request_duration_seconds",
            "Function requests through the gateway, head parsed to exchange end, by status class",
            ("function", "status_class"),
        )
        self._by_function: dict[str, list[Histogram]] = {}
        starts = registry.counter(
            "agentcell_session_starts_total",
            "Sessions placed on a ready (warm) or a new (cold) instance",
            ("kind",),
        )
        self._warm, self._cold = starts.labels("warm"), starts.labels("cold")
        phases = registry.histogram(
            "agentcell_start_phase_duration_seconds", "Duration of each phase of a start", ("phase",)
        )
        self._phases = {name: phases.labels(name) for name in PHASES}
        self._reaps = registry.counter(
            "agentcell_reaps_total", "Sessions, instances and sandboxes reaped, by reason", ("reason",)
        )
        self._errors = registry.counter(
            "agentcell_errors_total", "Error answers of the API, by error code", ("code",)
        )
        self._persist = registry.histogram(
            "agentcell_snapshot_persist_duration_seconds", "Workspace snapshots taken (persist)"
        ).labels()
        self._uploaded = registry.counter(
            "agentcell_snapshot_uploaded_bytes_total",
            "Bytes workspace snapshots uploaded to the object store",
        ).labels()
        self._persist_failed = registry.counter(
            "agentcell_snapshot_failures_total", "Workspace snapshots that failed"
        ).labels()

    # -- time ------------------------------------------------------------------------------------

    @staticmethod
    def now() -> float:
        """A monotonic reading for measuring a phase (pass it back to `phase`)."""
        return time.perf_counter()

    # -- the gateway -----------------------------------------------------------------------------

    def request_done(self, function: str, status: int, duration_s: float) -> None:
        """A function request finished (called from the gateway's completion callback)."""
        children = self._by_function.get(function) or self._function_children(function)
        children[_status_index(status)].observe(duration_s)

    def _function_children(self, function: str) -> list[Histogram]:
        children = [self._requests.labels(function, c) for c in STATUS_CLASSES]
        self._by_function[function] = children
        return children

    def function_deleted(self, function: str) -> None:
        """Its request series go (a later function of the same name starts from zero)."""
        if self._by_function.pop(function, None) is not None:
            for status_class in STATUS_CLASSES:
                self._requests.remove(function, status_class)

    def begin_request(self, head: RequestLike, function: str) -> float:
        """The awaiting (not warm) route of a request starts, in its own task: its span, when
        tracing, becomes the parent of what the scheduler does for it. Returns the start for
        `first_byte`."""
        if self.tracing is not None and self.tracing.sampled():
            attrs = {"http.request.method": head.method.decode("latin-1"), "agentcell.function": function}
            attrs["agentcell.request_id"] = head.request_id
            _parent_span.set(self.tracing.begin("gateway.request", attrs, kind="server"))
        return time.perf_counter()

    def first_byte(self, started: float) -> HeadHook | None:
        """An `on_response_head` hook recording the first-byte phase of a request that waited."""
        return partial(self._first_byte, started)

    def _first_byte(self, started: float, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self.phase("first_byte", started)

    def traced(
        self, on_complete: CompletionCallback, context: Mapping[str, Any], head: RequestLike
    ) -> CompletionCallback:
        """`on_complete` itself when tracing is off; else one that also records the request's spans."""
        live = _parent_span.get()
        if self.tracing is None or (live is None and not self.tracing.sampled()):
            return on_complete
        forwarded_ns = time.time_ns()
        return partial(
            self._end_request, on_complete, context, head.method, head.request_id, live, forwarded_ns
        )

    def _end_request(
        self,
        on_complete: CompletionCallback,
        context: Mapping[str, Any],
        method: bytes,
        request_id: str,
        live: Span | None,
        forwarded_ns: int,
        status: int,
        bytes_in: int,
        bytes_out: int,
        duration_s: float,
    ) -> None:
        on_complete(status, bytes_in, bytes_out, duration_s)
        assert self.tracing is not None
        end_ns = time.time_ns()
        attrs: dict[str, str | int] = {f"agentcell.{k}": str(v) for k, v in context.items() if v is not None}
        attrs.update({"http.response.status_code": status, "agentcell.request_id": request_id})
        attrs["http.request.method"] = method.decode("latin-1")
        if live is None:  # the warm path: one span, made now, with the exchange's duration
            self.tracing.record(
                "gateway.request", end_ns - int(duration_s * 1e9), end_ns, attrs, kind="server"
            )
            return
        exchange: dict[str, str | int] = {"agentcell.instance": str(context.get("instance"))}
        exchange["http.response.status_code"] = status
        self.tracing.record("instance.exchange", forwarded_ns, end_ns, exchange, parent=live)
        live.set_attributes(attrs)
        live.end(end_time=end_ns)

    # -- the scheduler ---------------------------------------------------------------------------

    def begin_session(self, bound: asyncio.Future[None], session_id: str, function: str) -> None:
        """A session start begins (in its own task): with tracing, a span ending when it is bound
        (or fails), parent of its phases."""
        if self.tracing is not None:
            attrs = {"agentcell.session": session_id, "agentcell.function": function}
            span = self.tracing.begin("session.start", attrs, parent=_parent_span.get())
            _parent_span.set(span)
            bound.add_done_callback(lambda _: span.end())

    def session_started(self, warm: bool) -> None:
        (self._warm if warm else self._cold).inc()

    def phase(self, name: str, started: float, instance: str | None = None) -> None:
        """A start phase that began at `started` (from `now()`) just ended."""
        elapsed = time.perf_counter() - started
        self._phases[name].observe(elapsed)
        if self.tracing is not None:
            end_ns = time.time_ns()
            attrs = {"agentcell.instance": instance} if instance else {}
            self.tracing.record(
                f"start.{name}", end_ns - int(elapsed * 1e9), end_ns, attrs, _parent_span.get()
            )

    def reaped(self, reason: str, count: int = 1) -> None:
        if count:
            self._reaps.labels(reason).inc(count)

    def reaped_batch(self, session_reasons: Sequence[str], instances_idle: int) -> None:
        """One reaping pass: sessions by their end reason, spare instances stopped for idleness."""
        for reason in session_reasons:
            self._reaps.labels(f"session_{reason}").inc()
        self.reaped("instance_idle", instances_idle)

    def persisted(self, started: float, uploaded_bytes: int) -> None:
        self._persist.observe(time.perf_counter() - started)
        self._uploaded.inc(uploaded_bytes)

    def persist_failed(self) -> None:
        self._persist_failed.inc()

    # -- the API ---------------------------------------------------------------------------------

    def error(self, code: str) -> None:
        self._errors.labels(code).inc()

    async def aclose(self) -> None:
        """Flush and stop the trace exporter (its last batch goes out over the network)."""
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.aclose)


class NullTelemetry(Telemetry):
    """Metrics and tracing off: every hook returns at once (the registry stays empty)."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.tracing = None

    def request_done(self, function: str, status: int, duration_s: float) -> None:
        pass

    def function_deleted(self, function: str) -> None:
        pass

    def begin_request(self, head: RequestLike, function: str) -> float:
        return 0.0

    def first_byte(self, started: float) -> HeadHook | None:
        return None

    def begin_session(self, bound: asyncio.Future[None], session_id: str, function: str) -> None:
        pass

    def session_started(self, warm: bool) -> None:
        pass

    def phase(self, name: str, started: float, instance: str | None = None) -> None:
        pass

    def reaped(self, reason: str, count: int = 1) -> None:
        pass

    def reaped_batch(self, session_reasons: Sequence[str], instances_idle: int) -> None:
        pass

    def persisted(self, started: float, uploaded_bytes: int) -> None:
        pass

    def persist_failed(self) -> None:
        pass

    def error(self, code: str) -> None:
        pass


def build_telemetry(metrics: bool, otlp_endpoint: str | None, trace_sample_ratio: float = 1.0) -> Telemetry:
    """What the settings ask for: metrics (AGENTCELL_METRICS), traces (AGENTCELL_OTLP_ENDPOINT;
    the SDK is imported only then), or neither."""
    tracing = start_tracing(otlp_endpoint, sample_ratio=trace_sample_ratio)
    if not metrics and tracing is None:
        return NullTelemetry()
    return Telemetry(Registry(), tracing)
