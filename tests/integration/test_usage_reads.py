"""GET /v1/usage on the real server writes nothing: a dashboard polling it used to add a ledger row
per live session and sandbox on every read (each read metered everything first). The answer still
counts live time up to now, and the periodic write neither doubles nor drops what a read showed."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager

import httpx

from tests.conftest import AUTH, ServerFactory, ServerProcess
from tests.integration.conftest import deploy

KEY = "x-agentcell-session-id"
ALL_TIME = {"since": "1970-01-01T00:00:00Z"}


def ledger_rows(server: ServerProcess, after: float = 0.0) -> list[tuple[str, float]]:
    """(kind, end) of the usage rows in the server's SQLite ledger that end after `after`."""
    with closing(sqlite3.connect(server.state_dir / "meta.db", timeout=10)) as db:
        query = 'SELECT kind, "end" FROM usage WHERE "end" > ?'
        return [(kind, end) for kind, end in db.execute(query, (after,)).fetchall()]


def billed_wall(api: httpx.Client, by: str, field: str, value: str) -> float:
    """Active plus idle seconds billed so far to the session key or sandbox `value`."""
    reply = api.get("/v1/usage", params={"by": by, **ALL_TIME})
    assert reply.status_code == 200, reply.text
    line = next(line for line in reply.json()["lines"] if line[field] == value)
    return float(line["active_s"] + line["idle_s"])


def billed_both(api: httpx.Client, key: str, sandbox: str) -> tuple[float, float]:
    return billed_wall(api, "session", "session_key", key), billed_wall(api, "sandbox", "sandbox_id", sandbox)


@contextmanager
def live_session_and_sandbox(server: ServerProcess) -> Iterator[tuple[httpx.Client, str, str]]:
    """A session (of a new function) and a sandbox, both live for the block: (api, key, sandbox)."""
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        fn, key = "reads-" + uuid.uuid4().hex[:6], "poller"
        assert deploy(api, fn, {"cmd": "python3 app.py", "idle_timeout_s": 600}).status_code == 200
        assert api.get(f"/fn/{fn}/whoami", headers={KEY: key}).status_code == 200
        created = api.post("/v1/sandboxes", json={"timeout_s": 600})
        assert created.status_code == 201, created.text
        sandbox = created.json()["id"]
        try:
            yield api, key, sandbox
        finally:
            api.delete(f"/v1/sandboxes/{sandbox}")
            api.delete(f"/v1/functions/{fn}")


def test_repeated_usage_reads_write_no_rows_yet_count_live_time(server_factory: ServerFactory) -> None:
    server = server_factory(env={"AGENTCELL_USAGE_INTERVAL_S": "3600"})
    with live_session_and_sandbox(server) as (api, key, sandbox):
        rows_before = len(ledger_rows(server))
        first = (
            billed_wall(api, "session", "session_key", key),
            billed_wall(api, "sandbox", "sandbox_id", sandbox),
        )
        for _ in range(10):  # a dashboard polling
            billed_both(api, key, sandbox)
        time.sleep(1.0)
        later = (
            billed_wall(api, "session", "session_key", key),
            billed_wall(api, "sandbox", "sandbox_id", sandbox),
        )
        assert len(ledger_rows(server)) == rows_before  # 24 reads, not one row more
        for before, after in zip(first, later, strict=True):
            assert before > 0 and 1.0 <= after - before <= 2.5, (first, later)  # live time up to now


def test_a_read_then_the_periodic_write_then_a_read_neither_doubles_nor_loses(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(env={"AGENTCELL_USAGE_INTERVAL_S": "1"})
    with live_session_and_sandbox(server) as (api, key, sandbox):
        time.sleep(1.5)  # a first periodic write or so: rows are both in the ledger and live
        read_at = time.time()
        first = (
            billed_wall(api, "session", "session_key", key),
            billed_wall(api, "sandbox", "sandbox_id", sandbox),
        )
        first_done = time.time()
        deadline = time.monotonic() + 15
        while {"session", "sandbox"} - {kind for kind, _ in ledger_rows(server, after=first_done)}:
            assert time.monotonic() < deadline, "no periodic usage write within 15 s"
            time.sleep(0.1)
        time.sleep(0.3)
        again_at = time.time()
        later = (
            billed_wall(api, "session", "session_key", key),
            billed_wall(api, "sandbox", "sandbox_id", sandbox),
        )
        again_done = time.time()
        for before, after in zip(first, later, strict=True):
            # what was billed grew by the time between the reads: not twice what a read showed,
            # and nothing of it lost in the handover from the live meter to the written row
            assert again_at - first_done - 0.3 <= after - before <= again_done - read_at + 0.3, (first, later)
