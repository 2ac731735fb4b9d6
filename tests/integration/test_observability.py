"""Metrics, audit log and traces on the real server (Linux driver) after a scripted workload:
a sandbox created, used and killed; a function deployed with an initialize hook, a warm pool and
persisted workspaces; sessions started warm and cold, reaped for idleness, resumed from their
snapshot; some failing requests. Traces go to a tiny OTLP/HTTP collector on loopback."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import AUTH, TEST_API_KEY
from tests.integration.conftest import deploy
from tests.unit.test_metrics import parse


class Collector:
    """An OTLP/HTTP trace receiver: keeps the span names of every protobuf export it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, dict[str, Any]]] = []
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                collector.receive(self.path, body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def receive(self, path: str, body: bytes) -> None:
        self.paths.append(path)
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    attrs = {a.key: a.value.string_value or a.value.int_value for a in span.attributes}
                    self.spans.append((span.name, attrs))

    def names(self) -> set[str]:
        return {name for name, _ in self.spans}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.close()


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def scrape(api: httpx.Client) -> dict[str, float]:
    reply = api.get("/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(reply.text)


def sandbox_workload(api: httpx.Client) -> str:
    created = api.post("/v1/sandboxes", json={"timeout_s": 300})
    assert created.status_code == 201, created.text
    sandbox: str = created.json()["id"]
    ran = api.post(f"/v1/sandboxes/{sandbox}/commands", json={"cmd": "echo secret-$((6*7))"})
    assert ran.status_code == 200 and "secret-42" in ran.text
    assert api.delete(f"/v1/sandboxes/{sandbox}").status_code == 204
    return sandbox


def test_metrics_audit_and_traces_after_a_workload(
    server_factory: type, collector: Collector, tmp_path: object
) -> None:
    server = server_factory(
        env={"AGENTCELL_OTLP_ENDPOINT": collector.url, "AGENTCELL_REAP_INTERVAL_S": "0.2"}
    )
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        sandbox = sandbox_workload(api)
        assert api.delete("/v1/sandboxes/sbx_unknown").status_code == 404

        name = "obs-" + uuid.uuid4().hex[:8]
        config = {
            "cmd": "python3 app.py",
            "idle_timeout_s": 1,
            "min_warm": 1,
            "initialize": {"cmd": "true"},
            "workspace": {"persist": True, "sync_interval_s": 0},
        }
        assert deploy(api, name, config).status_code == 200
        wait_for(
            lambda: scrape(api).get(f'agentcell_warm_pool_instances{{function="{name}"}}', 0) >= 1,
            20,
            "a warm instance",
        )
        wait_for(
            lambda: scrape(api).get('agentcell_instances{state="ready"}', 0) >= 1, 20, "a ready instance"
        )

        key = {"x-agentcell-session-id": "k1"}
        assert api.get(f"/fn/{name}/write?path=/home/user/note&text=hi", headers=key).status_code == 200
        assert api.get(f"/fn/{name}/whoami", headers=key).status_code == 200  # the warm path
        prewarmed = api.post(f"/v1/functions/{name}/sessions", json={"key": "k2"})
        assert prewarmed.status_code == 201, prewarmed.text

        live = scrape(api)
        assert (
            live['agentcell_sessions{state="idle"}'] + live.get('agentcell_sessions{state="active"}', 0) >= 2
        )
        assert live['agentcell_session_starts_total{kind="warm"}'] >= 1
        assert (
            live['agentcell_session_starts_total{kind="cold"}']
            + live['agentcell_session_starts_total{kind="warm"}']
            == 2
        )

        wait_for(
            lambda: scrape(api).get('agentcell_reaps_total{reason="session_idle"}', 0) >= 2, 20, "idle reaps"
        )
        resumed = api.get(f"/fn/{name}/file?path=/home/user/note", headers=key)
        assert resumed.status_code == 200 and resumed.json() == {"text": "hi"}  # restored from its snapshot

        after = scrape(api)
        requests = f'agentcell_gateway_request_duration_seconds_count{{function="{name}",status_class="2xx"}}'
        assert after[requests] >= 3
        for phase in ("claim", "sandbox_spawn", "server_listen", "initialize_hook", "restore", "first_byte"):
            assert after[f'agentcell_start_phase_duration_seconds_count{{phase="{phase}"}}'] >= 1, phase
        assert after["agentcell_snapshot_persist_duration_seconds_count"] >= 1
        assert after["agentcell_snapshot_uploaded_bytes_total"] > 0
        assert after['agentcell_errors_total{code="not_found"}'] >= 1
        assert 'agentcell_sandboxes{state="running"}' not in after  # killed

        audit = api.get("/v1/audit", params={"limit": 1000}).json()["entries"]
        actions = [(e["action"], e["status"], e["target"]) for e in audit]
        assert ("POST /v1/sandboxes", 201, f"id={sandbox}") in actions
        assert ("POST /v1/sandboxes/{sandbox_id}/commands", 200, f"sandbox_id={sandbox}") in actions
        assert ("DELETE /v1/sandboxes/{sandbox_id}", 204, f"sandbox_id={sandbox}") in actions
        assert ("DELETE /v1/sandboxes/{sandbox_id}", 404, "sandbox_id=sbx_unknown") in actions
        assert ("PUT /v1/functions/{name}", 200, f"name={name}") in actions
        session_id = prewarmed.json()["id"]
        assert ("POST /v1/functions/{name}/sessions", 201, f"name={name},id={session_id}") in actions
        assert all(e["method"] in ("POST", "PUT", "PATCH", "DELETE") for e in audit)
        admin_key_id = TEST_API_KEY.split("_")[1]
        assert all(e["actor"] == admin_key_id and e["request_id"].startswith("req_") for e in audit)
        deletes = api.get("/v1/audit", params={"action": "DELETE /v1/sandboxes/{sandbox_id}"}).json()[
            "entries"
        ]
        assert [e["status"] for e in deletes] == [204, 404]

    wait_for(lambda: {"gateway.request", "session.start", "start.claim"} <= collector.names(), 15, "spans")
    names = collector.names()
    assert {"instance.exchange", "start.sandbox_spawn", "start.restore"} <= names, names
    assert all(path == "/v1/traces" for path in collector.paths)
    requests_traced = [a for n, a in collector.spans if n == "gateway.request"]
    assert any(
        a.get("agentcell.function") == name and a.get("http.response.status_code") == 200
        for a in requests_traced
    )
    assert "secret" not in server.log()  # commands are not logged at info


def test_metrics_off_answers_not_found(server_factory: type) -> None:
    server = server_factory(driver="fake", env={"AGENTCELL_METRICS": "false"})
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=30) as api:
        reply = api.get("/metrics")
        assert reply.status_code == 404 and reply.json()["code"] == "not_found"
        assert api.post("/v1/sandboxes", json={}).status_code == 201
        assert [e["action"] for e in api.get("/v1/audit").json()["entries"]] == ["POST /v1/sandboxes"]
        assert len(api.get("/v1/audit", params={"tenant": "default"}).json()["entries"]) == 1
        assert api.get("/v1/audit", params={"tenant": "acme"}).json()["entries"] == []
        assert api.get("/v1/audit", params={"since": "2030-01-01T00:00:00Z"}).json()["entries"] == []
        bad = api.get("/v1/audit", params={"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"})
        assert bad.status_code == 400 and "until must not be before since" in bad.json()["message"]


def test_json_logs_carry_request_ids_and_no_commands(server_factory: type) -> None:
    """AGENTCELL_LOG_FORMAT=json: every line is a JSON object; a control-plane line names its
    request id; a command's text and output never reach the log at the default level."""
    server = server_factory(driver="fake", env={"AGENTCELL_LOG_FORMAT": "json"})
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=30) as api:
        created = api.post("/v1/sandboxes", json={"env": {"TOKEN": "hunter2-env"}})
        assert created.status_code == 201
        ran = api.post(f"/v1/sandboxes/{created.json()['id']}/commands", json={"cmd": "echo hunter2-cmd"})
        assert "hunter2-cmd" in ran.text
    server.stop()
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.strip()]
    started = [x for x in lines if x["message"] == f"sandbox {created.json()['id']} started"]
    assert started and started[0]["request_id"] == created.headers["x-request-id"]
    assert started[0]["tenant"] == "default"
    assert all({"time", "level", "logger", "message"} <= set(x) for x in lines)
    assert "hunter2" not in server.log_path.read_text()
