"""Integration fixtures: an HTTP client on the shared real server, and deployable test functions."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def code_archive(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return buffer.getvalue()


def deploy(
    api: httpx.Client, name: str, config: dict[str, object], code: Path = FIXTURES / "echo_fn"
) -> httpx.Response:
    files = {"config": (None, json.dumps(config)), "code": ("code.tar.gz", code_archive(code))}
    return api.put(f"/v1/functions/{name}", files=files)


@pytest.fixture
def api(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=60, headers=AUTH) as client:
        yield client
