"""Session billing on the real server, measured against the wall clock: time a session spent
queued for room (no instance) is not billed, and a crash and restart neither bills time since the
epoch nor bills again the CPU an instance's cgroup had counted before the crash."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from typing import Any

import httpx

from tests.conftest import AUTH, ServerFactory
from tests.integration.conftest import deploy

KEY = "x-agentcell-session-id"
ALL_TIME = {"since": "1970-01-01T00:00:00Z"}


def lines(api: httpx.Client, by: str) -> list[dict[str, Any]]:
    reply = api.get("/v1/usage", params={"by": by, **ALL_TIME})
    assert reply.status_code == 200, reply.text
    found: list[dict[str, Any]] = reply.json()["lines"]
    return found


def session_line(api: httpx.Client, fn: str, key: str) -> dict[str, Any]:
    return next(
        line for line in lines(api, "session") if line["function"] == fn and line["session_key"] == key
    )


def test_time_queued_for_room_is_not_billed(server_factory: ServerFactory) -> None:
    """At max_instances a new session waits for room with no instance: that wait used to be billed
    as the session's idle time (and the instance it waited for was billed to its owner meanwhile)."""
    server = server_factory(env={"AGENTCELL_WAIT_TIMEOUT_S": "20"})
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        fn = "queue-" + uuid.uuid4().hex[:6]
        config = {"cmd": "python3 app.py", "idle_timeout_s": 2, "max_instances": 1}
        assert deploy(api, fn, config).status_code == 200
        assert api.get(f"/fn/{fn}/whoami", headers={KEY: "holder"}).status_code == 200
        started = time.monotonic()
        reply = api.get(f"/fn/{fn}/whoami", headers={KEY: "queued"})  # waits for holder's idle-out
        answered = time.monotonic()
        assert reply.status_code == 200, reply.text
        assert answered - started >= 1.5  # it did wait in the queue
        line = session_line(api, fn, "queued")
        billed = line["active_s"] + line["idle_s"]
        # billed from its placement: a cold start (well under a second here) plus what followed
        assert billed <= time.monotonic() - answered + 1.0, (billed, answered - started)


def test_a_crash_and_restart_bill_neither_the_epoch_nor_cpu_twice(server_factory: ServerFactory) -> None:
    """SIGKILL, then a new server re-adopts the instances: their meters used to start at 0 (1970),
    billing ~1.8e9 idle seconds to the session and to a warm instance, and the cgroup's whole CPU
    counter was billed again."""
    server = server_factory(env={"AGENTCELL_USAGE_INTERVAL_S": "1"})
    began = time.time()
    fn = "crash-" + uuid.uuid4().hex[:6]
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        config = {"cmd": "python3 app.py", "idle_timeout_s": 600, "min_warm": 1}
        assert deploy(api, fn, config).status_code == 200
        assert api.get(f"/fn/{fn}/burn", params={"s": 0.8}, headers={KEY: "k1"}).status_code == 200
        before = session_line(api, fn, "k1")
        time.sleep(2.5)  # a periodic write (a read writes nothing) puts the burn's CPU in the ledger
        assert before["cpu_s"] >= 0.7
        server.stop(signal.SIGKILL)
    again = server_factory(state_dir=server.state_dir)
    with httpx.Client(headers=AUTH, base_url=again.url, timeout=60) as api:
        assert api.get(f"/fn/{fn}/whoami", headers={KEY: "k1"}).status_code == 200
        wall = time.time() - began
        for line in lines(api, "kind"):
            assert 0 <= line["idle_s"] <= wall and 0 <= line["active_s"] <= wall, line
        after = session_line(api, fn, "k1")
        assert after["cpu_s"] < before["cpu_s"] + 0.4, (before, after)  # not the 0.8 s again
        api.delete(f"/v1/functions/{fn}")


def _hold(url: str, fn: str, key: str, seconds: float, out: dict[str, int]) -> None:
    with httpx.Client(headers=AUTH, base_url=url, timeout=60) as api:
        out[key] = api.get(f"/fn/{fn}/slow", params={"s": seconds}, headers={KEY: key}).status_code


def test_a_shared_instance_splits_and_does_not_double_bill(server_factory: ServerFactory) -> None:
    """Two sessions on one instance (sessions_per_instance 2): one holds a request for 2 s while
    the other idles. The busy one bills ~2 s active, the idle one none; each row carries half the
    instance's memory, so the instance's memory-seconds are those of its wall time, once."""
    server = server_factory()
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        fn = "shared-" + uuid.uuid4().hex[:6]
        config = {"cmd": "python3 app.py", "sessions_per_instance": 2, "memory_mb": 512}
        assert deploy(api, fn, config).status_code == 200
        first = api.get(f"/fn/{fn}/whoami", headers={KEY: "idle-one"}).json()["instance"]
        results: dict[str, int] = {}
        holder = threading.Thread(target=_hold, args=(server.url, fn, "busy-one", 2.0, results))
        holder.start()
        holder.join()
        assert results == {"busy-one": 200}
        sessions = api.get(f"/v1/functions/{fn}/sessions").json()["sessions"]
        assert {s["instance_id"] for s in sessions} == {first}
        busy, idle = session_line(api, fn, "busy-one"), session_line(api, fn, "idle-one")
        assert 1.9 <= busy["active_s"] <= 2.6 and idle["active_s"] < 0.1, (busy, idle)
        wall = busy["active_s"] + busy["idle_s"]
        assert busy["memory_gib_s"] <= wall * 0.25 + 0.01  # half of 0.5 GiB
        api.delete(f"/v1/functions/{fn}")


def test_a_session_alone_on_a_shared_instance_pays_all_of_it_until_another_joins(
    server_factory: ServerFactory,
) -> None:
    """The equal split applies from the moment a second session joins: the time the first spent
    alone on the instance used to be billed at half the instance (the split was applied to the
    whole stretch since the last metering), so half its memory-seconds were never billed."""
    server = server_factory(env={"AGENTCELL_USAGE_INTERVAL_S": "3600"})
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        fn = "join-" + uuid.uuid4().hex[:6]
        config = {"cmd": "python3 app.py", "sessions_per_instance": 2, "memory_mb": 512}
        assert deploy(api, fn, config).status_code == 200
        first = api.get(f"/fn/{fn}/whoami", headers={KEY: "first"}).json()["instance"]
        time.sleep(3)
        assert api.get(f"/fn/{fn}/whoami", headers={KEY: "second"}).json()["instance"] == first
        alone = session_line(api, fn, "first")
        wall = alone["active_s"] + alone["idle_s"]
        assert wall >= 3
        assert alone["memory_gib_s"] >= (wall - 0.5) * 0.5, alone  # 0.5 GiB while it was alone
        api.delete(f"/v1/functions/{fn}")


BURN_AT_START = "python3 -c 'import time\nt=time.process_time()+1.0\nwhile time.process_time()<t: pass'"


def test_a_warm_instance_s_start_up_cpu_is_not_billed_to_its_first_session(
    server_factory: ServerFactory,
) -> None:
    """A pre-warmed (min_warm) instance burns 1 s of CPU while it starts. The session that later
    lands on it used to be billed that second (the spare's row was cut with no CPU read)."""
    server = server_factory(env={"AGENTCELL_USAGE_INTERVAL_S": "3600"})
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        fn = "warmcpu-" + uuid.uuid4().hex[:6]
        config = {"cmd": BURN_AT_START + "; exec python3 app.py", "min_warm": 1}
        assert deploy(api, fn, config).status_code == 200
        deadline = time.monotonic() + 30
        while not api.get(f"/v1/functions/{fn}").json()["warm_instances"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert api.get(f"/fn/{fn}/whoami", headers={KEY: "first"}).status_code == 200
        assert session_line(api, fn, "first")["cpu_s"] < 0.5
        spare = next(line for line in lines(api, "function") if line["function"] == fn)
        assert spare["cpu_s"] >= 0.9  # (billed once, to the instance)
        api.delete(f"/v1/functions/{fn}")
