"""What a short SDK script pays for at start: the parts of a sandbox it does not use (code, files,
tar archives) import nothing heavy, and a client of an http:// server builds no TLS context.
Checked in sys.modules of a fresh interpreter and by what the client reads, not timed."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from agentcell.client import code as client_code
from agentcell.client.api import ApiClient, tls_verification
from agentcell.client.code import DEFAULT_CODE_TIMEOUT_S
from agentcell.client.config import ClientConfig
from agentcell.protocol import code as protocol_code
from agentcell.protocol.code import DEFAULT_TIMEOUT_S
from agentcell.server.interpreter.sources import runtime_source
from tests.conftest import TEST_API_KEY

PARTS = (
    "agentcell.client.code",
    "agentcell.client.commands",
    "agentcell.client.files",
    "agentcell.client.transfer",
)
WHAT_PARTS_USE_LATER = {
    "agentcell.protocol.code",
    "agentcell.protocol.commands",
    "agentcell.protocol.files",
    "agentcell.client.events",
    "agentcell.client.code_archive",
    "tarfile",
}
"""Imported by the method that needs them: wire models of code, commands and files, tar."""

CREATE_THEN_RUN = """
import json, sys
from agentcell.client import Sandbox
sandbox = Sandbox.create(api_url=sys.argv[1], api_key=sys.argv[2])
created = sorted(sys.modules)
try:
    result = sandbox.commands.run("echo ran")
finally:
    sandbox.kill()
    sandbox.close()
print(json.dumps({"stdout": result.stdout, "created": created, "ran": sorted(sys.modules)}))
"""


def modules_after(code: str, *args: str) -> tuple[str, set[str]]:
    """What `code` printed in a fresh interpreter, and the modules it had imported at its end."""
    report = "\nimport json as _json, sys as _sys\nprint(_json.dumps(sorted(_sys.modules)), file=_sys.stderr)"
    done = subprocess.run(
        [sys.executable, "-c", code + report, *args], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout, set(json.loads(done.stderr.splitlines()[-1]))


def test_the_parts_of_a_sandbox_import_what_they_use_only_when_used() -> None:
    _, modules = modules_after("\n".join(f"import {part}" for part in PARTS))
    assert set(PARTS) <= modules
    assert not WHAT_PARTS_USE_LATER & modules


def test_a_script_imports_the_parts_it_uses_when_it_uses_them(server_url: str) -> None:
    """From a fresh process: `Sandbox.create()` imports no wire model of code, commands or files,
    no tarfile, nor the SDK's functions or templates; `commands.run` then imports what commands
    need, and runs as always."""
    out, _ = modules_after(CREATE_THEN_RUN, server_url, TEST_API_KEY)
    report = json.loads(out)
    other_halves = {"agentcell.client.functions", "agentcell.client.templates", "httpx._main"}
    assert not (WHAT_PARTS_USE_LATER | other_halves) & set(report["created"])
    assert report["stdout"] == "ran\n"
    assert {"agentcell.protocol.commands", "agentcell.client.events"} <= set(report["ran"])
    assert not {"agentcell.protocol.code", "agentcell.protocol.files", "tarfile"} & set(report["ran"])


def test_the_sdk_does_not_import_the_httpx_command_line() -> None:
    """httpx's own CLI (click, rich, pygments) is not imported with the SDK, and can still be
    imported afterwards."""
    code = "from agentcell.client import Sandbox, AsyncSandbox\nprint('httpx._main' in sys.modules)"
    out, _ = modules_after(f"import sys\n{code}\nimport httpx._main\nprint(callable(httpx._main.main))")
    assert out.split() == ["False", "True"]


def test_the_code_default_timeout_is_the_servers() -> None:
    """client.code keeps its own copy (so that sandbox signatures need no wire model): the same value."""
    assert DEFAULT_CODE_TIMEOUT_S == DEFAULT_TIMEOUT_S


def test_the_rich_result_types_are_the_kernels() -> None:
    """The kernel's source (which runs in the sandbox and imports nothing of ours) and the SDK
    each name the table and chart MIME types: the protocol's."""
    kernel = runtime_source("rich_output.py")
    for name, mime in (("TABLE_MIME", protocol_code.TABLE_MIME), ("CHART_MIME", protocol_code.CHART_MIME)):
        assert f'{name} = "{mime}"' in kernel
        assert getattr(client_code, name) == mime


def config(url: str) -> ClientConfig:
    return ClientConfig(api_url=url, api_key=None)


async def test_an_http_client_loads_no_ca_certificates(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An https:// client loads its CAs when it is made (here from SSL_CERT_FILE, which httpx reads
    for its default verification: a missing file fails); an http:// client loads none."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca-bundle.pem"))
    with pytest.raises(FileNotFoundError):
        ApiClient(config("https://agentcell.example"))
    api = ApiClient(config("http://127.0.0.1:9"))
    await api.aclose()


def test_https_keeps_httpx_default_verification_and_http_gets_a_context_that_trusts_nothing() -> None:
    assert tls_verification("https://agentcell.example") is True
    plain = tls_verification("http://127.0.0.1:8700")
    assert isinstance(plain, ssl.SSLContext)
    assert plain.verify_mode == ssl.CERT_REQUIRED and plain.check_hostname
    assert plain.cert_store_stats()["x509_ca"] == 0
