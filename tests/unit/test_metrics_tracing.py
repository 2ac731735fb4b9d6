"""Spans made by the Telemetry hooks, through the same setup code the server uses
(`start_tracing`), exported to the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentcell.server.observability.registry import Registry
from agentcell.server.observability.telemetry import Telemetry
from agentcell.server.observability.tracing import otlp_traces_url, start_tracing


@dataclass
class Head:
    method: bytes = b"GET"
    request_id: str = "req_1"


@pytest.fixture
def traced() -> Iterator[tuple[Telemetry, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = start_tracing(None, exporter=exporter)
    assert tracing is not None
    yield Telemetry(Registry(), tracing), exporter
    tracing.aclose()


def finished(telemetry: Telemetry, exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    assert telemetry.tracing is not None and telemetry.tracing.flush()
    return {span.name: span for span in exporter.get_finished_spans()}


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    found: int = span.context.span_id
    return found


async def test_a_cold_request_nests_the_session_start_and_its_phases(
    traced: tuple[Telemetry, InMemorySpanExporter],
) -> None:
    """gateway.request → session.start → start.* phases, and gateway.request → instance.exchange."""
    telemetry, exporter = traced
    done: list[int] = []

    async def bind(bound: asyncio.Future[None]) -> None:  # the scheduler's bind task
        telemetry.begin_session(bound, "ses_1", "echo")
        started = telemetry.now()
        await asyncio.sleep(0)
        telemetry.phase("claim", started, "ins_1")
        bound.set_result(None)

    async def route() -> None:  # the gateway's awaiting route, in a task of its own
        telemetry.begin_request(Head(), "echo")
        bound: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await asyncio.create_task(bind(bound))
        complete = telemetry.traced(lambda *args: done.append(args[0]), {"function": "echo"}, Head())
        complete(200, 0, 5, 0.01)

    await asyncio.create_task(route())
    assert done == [200]
    spans = finished(telemetry, exporter)
    request, session = spans["gateway.request"], spans["session.start"]
    assert parent_of(request) is None
    assert parent_of(session) == span_id(request)
    assert parent_of(spans["start.claim"]) == span_id(session)
    assert parent_of(spans["instance.exchange"]) == span_id(request)
    assert request.attributes is not None and request.attributes["http.response.status_code"] == 200
    assert spans["start.claim"].attributes == {"agentcell.instance": "ins_1"}


def test_a_warm_request_is_recorded_after_the_fact(traced: tuple[Telemetry, InMemorySpanExporter]) -> None:
    """No live span on the warm path: the request span is made at completion, with its duration."""
    telemetry, exporter = traced
    complete = telemetry.traced(lambda *args: None, {"function": "echo", "session": "ses_2"}, Head(b"POST"))
    complete(201, 10, 20, 0.25)
    spans = finished(telemetry, exporter)
    request = spans["gateway.request"]
    assert request.start_time is not None and request.end_time is not None
    assert abs((request.end_time - request.start_time) / 1e9 - 0.25) < 0.01
    assert request.attributes is not None
    assert request.attributes["agentcell.session"] == "ses_2"
    assert request.attributes["http.request.method"] == "POST"
    assert set(spans) == {"gateway.request"}  # one span: the exchange is the whole request here


def test_requests_are_sampled_at_the_configured_ratio() -> None:
    """AGENTCELL_TRACE_SAMPLE_RATIO=0: no request span (the callback is passed through)."""
    exporter = InMemorySpanExporter()
    tracing = start_tracing(None, exporter=exporter, sample_ratio=0.0)
    assert tracing is not None
    telemetry = Telemetry(Registry(), tracing)

    def callback(status: int, bytes_in: int, bytes_out: int, duration_s: float) -> None:
        pass

    assert telemetry.traced(callback, {}, Head()) is callback
    tracing.aclose()


def test_without_tracing_the_completion_callback_is_passed_through() -> None:
    telemetry = Telemetry(Registry())

    def callback(status: int, bytes_in: int, bytes_out: int, duration_s: float) -> None:
        pass

    assert telemetry.traced(callback, {}, Head()) is callback


def test_the_otlp_url_names_the_traces_path() -> None:
    assert otlp_traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert otlp_traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
