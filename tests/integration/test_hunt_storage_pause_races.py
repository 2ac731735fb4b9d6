"""Pause against the other ends of a sandbox's life: a timeout reached, or a kill from another
door, while the pause is still saving must not leave a paused sandbox behind a pause that failed."""

from __future__ import annotations

import httpx

from agentcell.client import Sandbox

FILL = "cd; echo keep > keep.txt; for i in $(seq 30); do head -c 10M /dev/urandom > f$i; done"


def test_a_timeout_reached_while_a_pause_saves_leaves_one_answer(server_url: str, api: httpx.Client) -> None:
    """Saving 300 MiB takes a few seconds; the sandbox's timeout passes meanwhile. The pause wins
    (the user asked for the files to be kept) and says so, and the files come back."""
    sbx = Sandbox.create(api_url=server_url, disk_mb=1024, timeout_s=120)
    try:
        assert sbx.commands.run(FILL).exit_code == 0
        assert api.post(f"/v1/sandboxes/{sbx.id}/timeout", json={"timeout_s": 1}).status_code == 200
        paused = api.post(f"/v1/sandboxes/{sbx.id}/pause")
        state = api.get(f"/v1/sandboxes/{sbx.id}")
        assert (paused.status_code, state.json()["state"]) == (200, "paused"), (paused.json(), state.json())
        resumed = api.post(f"/v1/sandboxes/{sbx.id}/resume", json={"timeout_s": 60})
        assert resumed.status_code == 200, resumed.json()
        assert sbx.commands.run("cd; cat keep.txt; ls f* | wc -l").stdout == "keep\n30\n"
    finally:
        api.delete(f"/v1/sandboxes/{sbx.id}")
        sbx.close()
