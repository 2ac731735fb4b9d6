"""The metrics registry and its text exposition, and the Telemetry hooks that feed it."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from agentcell.server.observability.registry import Registry
from agentcell.server.observability.telemetry import PHASES, NullTelemetry, Telemetry, build_telemetry

SAMPLE = re.compile(r'^([a-z_]+)(\{(?:[a-z_]+="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')


def parse(text: str) -> dict[str, float]:
    """Every sample line as `name{labels}` → value; every line must be a comment or a sample."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def test_counter_and_histogram_exposition() -> None:
    """Counters print their value; histogram buckets are cumulative up to +Inf = count."""
    registry = Registry()
    registry.counter("c_total", "a counter", ("kind",)).labels("a").inc(3)
    hist = registry.histogram("h_seconds", "a histogram", ("phase",), bounds=(0.1, 1.0)).labels("x")
    for value in (0.05, 0.5, 0.5, 7.0):
        hist.observe(value)
    text = registry.exposition()
    assert "# TYPE c_total counter" in text and "# TYPE h_seconds histogram" in text
    samples = parse(text)
    assert samples['c_total{kind="a"}'] == 3
    assert samples['h_seconds_bucket{phase="x",le="0.1"}'] == 1
    assert samples['h_seconds_bucket{phase="x",le="1"}'] == 3
    assert samples['h_seconds_bucket{phase="x",le="+Inf"}'] == 4
    assert samples['h_seconds_count{phase="x"}'] == 4
    assert math.isclose(samples['h_seconds_sum{phase="x"}'], 8.05)


def test_a_value_on_a_bound_falls_in_that_bucket() -> None:
    """Prometheus buckets are `le`: 0.1 belongs to le="0.1"."""
    registry = Registry()
    registry.histogram("h", "h", bounds=(0.1,)).labels().observe(0.1)
    assert parse(registry.exposition())['h_bucket{le="0.1"}'] == 1


def test_label_values_are_escaped() -> None:
    registry = Registry()
    registry.counter("c", "c", ("v",)).labels('a"b\\c\nd').inc()
    assert 'c{v="a\\"b\\\\c\\nd"} 1' in registry.exposition()


def test_gauges_are_read_when_scraped() -> None:
    """A gauge holds no value of its own: each exposition asks its reader."""
    registry = Registry()
    state = {"running": 2}
    registry.gauge("g", "g", ("state",), lambda: [((k,), float(v)) for k, v in state.items()])
    assert parse(registry.exposition())['g{state="running"}'] == 2
    state["running"] = 5
    assert parse(registry.exposition())['g{state="running"}'] == 5


def test_a_family_name_is_registered_once() -> None:
    registry = Registry()
    registry.counter("c", "c")
    with pytest.raises(ValueError, match="twice"):
        registry.counter("c", "c")


def test_requests_are_counted_by_function_and_status_class() -> None:
    telemetry = Telemetry(Registry())
    for status in (200, 204, 404, 502, 499):
        telemetry.request_done("echo", status, 0.002)
    samples = parse(telemetry.registry.exposition())
    name = "agentcell_gateway_request_duration_seconds_count"
    assert samples[f'{name}{{function="echo",status_class="2xx"}}'] == 2
    assert samples[f'{name}{{function="echo",status_class="4xx"}}'] == 2
    assert samples[f'{name}{{function="echo",status_class="5xx"}}'] == 1


def test_a_deleted_function_loses_its_series() -> None:
    telemetry = Telemetry(Registry())
    telemetry.request_done("gone", 200, 0.001)
    telemetry.request_done("kept", 200, 0.001)
    telemetry.function_deleted("gone")
    text = telemetry.registry.exposition()
    assert 'function="gone"' not in text and 'function="kept"' in text
    telemetry.request_done("gone", 500, 0.001)  # deployed again: counted from zero
    samples = parse(telemetry.registry.exposition())
    assert (
        samples['agentcell_gateway_request_duration_seconds_count{function="gone",status_class="5xx"}'] == 1
    )
    assert (
        samples['agentcell_gateway_request_duration_seconds_count{function="gone",status_class="2xx"}'] == 0
    )


def test_phases_starts_reaps_errors_and_persistence() -> None:
    telemetry = Telemetry(Registry())
    for phase in PHASES:
        telemetry.phase(phase, telemetry.now())
    telemetry.session_started(warm=True)
    telemetry.session_started(warm=False)
    telemetry.session_started(warm=False)
    telemetry.reaped_batch(["idle", "ttl", "idle"], instances_idle=1)
    telemetry.reaped("sandbox_timeout", 0)  # nothing reaped: no series
    telemetry.error("not_found")
    telemetry.persisted(telemetry.now(), 1234)
    telemetry.persist_failed()
    samples = parse(telemetry.registry.exposition())
    for phase in PHASES:
        assert samples[f'agentcell_start_phase_duration_seconds_count{{phase="{phase}"}}'] == 1
    assert samples['agentcell_session_starts_total{kind="warm"}'] == 1
    assert samples['agentcell_session_starts_total{kind="cold"}'] == 2
    assert samples['agentcell_reaps_total{reason="session_idle"}'] == 2
    assert samples['agentcell_reaps_total{reason="session_ttl"}'] == 1
    assert samples['agentcell_reaps_total{reason="instance_idle"}'] == 1
    assert 'agentcell_reaps_total{reason="sandbox_timeout"}' not in samples
    assert samples['agentcell_errors_total{code="not_found"}'] == 1
    assert samples["agentcell_snapshot_uploaded_bytes_total"] == 1234
    assert samples["agentcell_snapshot_persist_duration_seconds_count"] == 1
    assert samples["agentcell_snapshot_failures_total"] == 1


def test_null_telemetry_records_nothing() -> None:
    """AGENTCELL_METRICS=false and no OTLP endpoint: hooks exist, the registry stays empty."""
    telemetry = build_telemetry(metrics=False, otlp_endpoint=None)
    assert isinstance(telemetry, NullTelemetry)
    telemetry.request_done("echo", 200, 0.1)
    telemetry.phase("claim", telemetry.now())
    telemetry.error("internal")
    assert telemetry.first_byte(0.0) is None
    assert telemetry.registry.exposition() == "\n"


def test_without_an_endpoint_no_opentelemetry_module_is_imported() -> None:
    """Tracing off costs nothing: building the app's telemetry imports no OpenTelemetry SDK."""
    code = (
        "import sys\n"
        "from agentcell.server.observability.telemetry import build_telemetry\n"
        "t = build_telemetry(True, None)\n"
        "assert t.tracing is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
