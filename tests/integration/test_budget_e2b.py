"""The per-sandbox command budget holds through the E2B SDK too: envd's Start goes through the same
process table as agentcell's own API, so a sandbox with 64 commands running gets E2B's rate-limit
error (resource_exhausted, 429) saying what to do, and a killed command frees its slot."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from e2b import RateLimitException, Sandbox, SandboxException

DEFAULT_MAX_COMMANDS = 64


def test_an_e2b_start_past_the_command_budget_is_refused(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(timeout=120)
    handles = [sandbox.commands.run("sleep 600", background=True) for _ in range(DEFAULT_MAX_COMMANDS)]
    with pytest.raises(RateLimitException, match=f"limit of {DEFAULT_MAX_COMMANDS} commands") as refused:
        sandbox.commands.run("sleep 600", background=True)
    assert "kill" in str(refused.value)
    with pytest.raises(RateLimitException, match="commands at once"):
        sandbox.commands.run("echo hi")

    assert sandbox.commands.kill(handles[0].pid)
    for _ in range(100):  # the slot frees once the kill's end is recorded
        try:
            result = sandbox.commands.run("echo freed")
        except SandboxException:
            time.sleep(0.05)
            continue
        assert result.stdout == "freed\n"
        break
    else:
        pytest.fail("killing a command did not free its slot")
