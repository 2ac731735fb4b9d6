"""OpenTelemetry tracing, only when configured: `start_tracing` imports the SDK (the optional `otel`
extra) and builds a private TracerProvider that exports over OTLP/HTTP. With no endpoint nothing
here is imported by the server, and no span object is ever made.

Spans are mostly recorded after the fact (`record`, with start and end times the caller measured):
the gateway's warm path has no task to hold a live span, and a finished exchange knows its
duration. A live span (`begin`) is used where work nests under it in other tasks (a session
start: its phases run in the tasks it spawns).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

Attributes = Mapping[str, str | int | float | bool]
TRACES_PATH = "/v1/traces"


def otlp_traces_url(endpoint: str) -> str:
    """`http://host:4318` → `http://host:4318/v1/traces` (a URL that names the path is kept)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


class Tracing:
    """Owns the tracer provider; `aclose` flushes what is still queued."""

    def __init__(self, provider: TracerProvider, sample_ratio: float = 1.0) -> None:
        from opentelemetry import trace

        self._trace = trace
        self._provider = provider
        self._tracer = provider.get_tracer("agentcell")
        self._sample_ratio = sample_ratio

    def sampled(self) -> bool:
        """Whether to trace one more request (AGENTCELL_TRACE_SAMPLE_RATIO; starts always are)."""
        return self._sample_ratio >= 1.0 or random.random() < self._sample_ratio

    def begin(self, name: str, attributes: Attributes, parent: Span | None = None, kind: str = "") -> Span:
        """A live span; the caller ends it (`span.end()`)."""
        return self._tracer.start_span(
            name, context=self._context(parent), kind=self._kind(kind), attributes=attributes
        )

    def record(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        attributes: Attributes,
        parent: Span | None = None,
        kind: str = "",
    ) -> Span:
        """A span that already happened (epoch nanoseconds)."""
        span = self._tracer.start_span(
            name,
            context=self._context(parent),
            kind=self._kind(kind),
            attributes=attributes,
            start_time=start_ns,
        )
        span.end(end_time=max(start_ns, end_ns))
        return span

    def _context(self, parent: Span | None) -> Any:
        # Always an explicit context: spans never attach to whatever a library made current.
        from opentelemetry.context import Context

        return self._trace.set_span_in_context(parent, Context()) if parent is not None else Context()

    def _kind(self, kind: str) -> Any:
        return self._trace.SpanKind.SERVER if kind == "server" else self._trace.SpanKind.INTERNAL

    def flush(self, timeout_s: float = 5.0) -> bool:
        return bool(self._provider.force_flush(int(timeout_s * 1000)))

    def aclose(self) -> None:
        self._provider.shutdown()


def start_tracing(
    endpoint: str | None,
    service_name: str = "agentcell",
    exporter: SpanExporter | None = None,
    sample_ratio: float = 1.0,
) -> Tracing | None:
    """Tracing that exports to `endpoint` over OTLP/HTTP (or to `exporter`, e.g. the SDK's
    in-memory one in tests); None — and nothing imported — when neither is given."""
    if endpoint is None and exporter is None:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            assert endpoint is not None
            exporter = OTLPSpanExporter(endpoint=otlp_traces_url(endpoint), timeout=5)
    except ImportError as exc:
        raise RuntimeError(
            f"AGENTCELL_OTLP_ENDPOINT is set but OpenTelemetry is not installed ({exc.name}); "
            "install the otel extra: pip install 'agentcell[otel]'"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
    return Tracing(provider, sample_ratio)
