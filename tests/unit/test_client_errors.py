"""The SDK's error tree: envelopes, statuses without envelopes, transport failures, local refusals."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from agentcell import errors as domain
from agentcell.client import (
    AgentcellAPIError,
    AgentcellClientError,
    AgentcellConnectionError,
    AsyncSandbox,
    ClientClosedError,
    CommandExitError,
    CommandResult,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    NotRunningError,
    QuotaExceededError,
    SandboxTimeoutError,
    UnavailableError,
)
from agentcell.client.api import ApiClient, error_from_response
from agentcell.client.config import ClientConfig
from agentcell.client.errors import API_ERRORS_BY_CODE


def answer(status: int, body: object, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = httpx.Request("GET", "http://sdk.test/v1/sandboxes/sbx_x")
    return httpx.Response(status, content=content, headers=headers, request=request)


def envelope(code: str, message: str = "nope") -> dict[str, str]:
    return {"code": code, "message": message, "request_id": "req_1"}


def test_every_server_code_has_its_own_exception() -> None:
    """Each code of agentcell.errors maps to a distinct SDK class carrying that code."""
    assert set(API_ERRORS_BY_CODE) == set(domain.ERRORS_BY_CODE)
    for code, cls in API_ERRORS_BY_CODE.items():
        assert cls.code == code


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid_argument", InvalidArgumentError),
        (404, "not_found", NotFoundError),
        (409, "not_running", NotRunningError),
        (429, "quota_exceeded", QuotaExceededError),
        (503, "unavailable", UnavailableError),
        (504, "timeout", SandboxTimeoutError),
    ],
)
def test_envelope_becomes_the_exception_of_its_code(
    status: int, code: str, cls: type[AgentcellAPIError]
) -> None:
    """code, message, request_id and status all survive; the class is the code's."""
    exc = error_from_response(answer(status, envelope(code, "sandbox sbx_x is gone")))
    assert type(exc) is cls
    assert (exc.code, exc.message, exc.request_id, exc.status) == (
        code,
        "sandbox sbx_x is gone",
        "req_1",
        status,
    )
    assert isinstance(exc, AgentcellAPIError) and isinstance(exc, AgentcellClientError)
    assert "sandbox sbx_x is gone" in str(exc) and "req_1" in str(exc)


def test_not_running_is_a_conflict_and_timeout_is_a_timeout_error() -> None:
    """The tree nests like agentcell.errors and joins the builtin families."""
    assert issubclass(NotRunningError, ConflictError)
    assert issubclass(SandboxTimeoutError, TimeoutError)
    assert issubclass(AgentcellConnectionError, ConnectionError)


def test_retry_after_header_is_kept() -> None:
    """Retry-After (seconds) is exposed as retry_after_s."""
    exc = error_from_response(answer(429, envelope("quota_exceeded"), **{"retry-after": "7"}))
    assert exc.retry_after_s == 7.0


def test_answer_without_envelope_is_classified_by_status() -> None:
    """A proxy's HTML 502 still gives a typed error that shows what came back."""
    exc = error_from_response(answer(502, b"<html>bad gateway</html>", **{"x-request-id": "req_9"}))
    assert type(exc) is UnavailableError
    assert exc.status == 502 and exc.request_id == "req_9"
    assert "bad gateway" in exc.message


def test_unknown_code_keeps_the_code_and_takes_the_class_of_its_status() -> None:
    """A code newer than the SDK still gives a usable exception."""
    exc = error_from_response(answer(409, envelope("sandbox_paused")))
    assert type(exc) is ConflictError and exc.code == "sandbox_paused"


async def test_connection_refused_names_the_url() -> None:
    """An unreachable server raises a ConnectionError that says where the SDK looked."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    with pytest.raises(AgentcellConnectionError, match=r"http://10\.9\.8\.7:1234") as info:
        await AsyncSandbox.create(api_url="http://10.9.8.7:1234", transport=httpx.MockTransport(refuse))
    assert info.value.url == "http://10.9.8.7:1234"


async def test_bad_input_is_refused_before_sending() -> None:
    """Values the wire models refuse raise InvalidArgumentError without a request (status None)."""
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    with pytest.raises(InvalidArgumentError, match="memory_mb") as info:
        await AsyncSandbox.create(memory_mb=1, transport=httpx.MockTransport(record))
    assert info.value.status is None and sent == []


async def test_api_key_is_sent_as_bearer_and_found_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """api_key/api_url arguments win over AGENTCELL_API_KEY/AGENTCELL_URL."""
    monkeypatch.setenv("AGENTCELL_API_KEY", "k-env")
    monkeypatch.setenv("AGENTCELL_URL", "http://from-env:9")
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"sandboxes": []})

    await AsyncSandbox.list(transport=httpx.MockTransport(record))
    await AsyncSandbox.list(api_key="k-arg", api_url="http://arg:1/", transport=httpx.MockTransport(record))
    assert seen[0].headers["authorization"] == "Bearer k-env" and seen[0].url.host == "from-env"
    assert (
        seen[1].headers["authorization"] == "Bearer k-arg" and str(seen[1].url) == "http://arg:1/v1/sandboxes"
    )


async def test_no_api_key_sends_no_authorization(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without a key nothing is sent; the URL defaults to http://127.0.0.1:8700. (The state dir
    points at an empty directory: a server on this host may have written its admin key.)"""
    monkeypatch.delenv("AGENTCELL_API_KEY", raising=False)
    monkeypatch.delenv("AGENTCELL_URL", raising=False)
    monkeypatch.setenv("AGENTCELL_STATE_DIR", str(tmp_path))
    config = ClientConfig.resolve()
    assert config.api_url == "http://127.0.0.1:8700" and config.api_key is None
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"sandboxes": []})

    api = ApiClient(config, transport=httpx.MockTransport(record))
    await api.call("GET", "/v1/sandboxes")
    await api.aclose()
    assert "authorization" not in seen[0].headers


def test_command_exit_error_carries_the_result() -> None:
    """CommandExitError keeps the result and says why in its message."""
    result = CommandResult(stdout="", stderr="boom\n", exit_code=3)
    exc = CommandExitError(result)
    assert exc.result is result and exc.exit_code == 3
    assert "exited with code 3" in str(exc) and "boom" in str(exc)


async def test_a_call_after_aclose_says_the_object_was_closed_and_sends_nothing() -> None:
    """httpx's own error says only "Cannot send a request, as the client has been closed"."""
    sent: list[httpx.Request] = []

    def sandbox_info(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        info = {"id": "sbx_x", "template": "base", "state": "running", "env_keys": [], "metadata": {}}
        times = {"created_at": "2026-11-23T00:00:00Z", "expires_at": "2026-11-23T00:05:00Z"}
        limits = {"cpu": 1.0, "memory_mb": 512, "disk_mb": 1024, "network": {"egress": "none", "allow": []}}
        return httpx.Response(200, json={**info, **times, **limits})

    sandbox = await AsyncSandbox.connect("sbx_x", transport=httpx.MockTransport(sandbox_info))
    await sandbox.aclose()
    with pytest.raises(ClientClosedError, match=r"was closed .* Sandbox\.connect\(sandbox_id\) reattaches"):
        await sandbox.commands.run("echo hi")
    with pytest.raises(AgentcellClientError, match="was closed"):
        await sandbox.files.read("/home/user/x")
    assert len(sent) == 1
