"""The official `mcp` SDK is imported on the first `/mcp` request, not when the server starts
(api/mcp_lazy.py): it was a third of every start. The MCP server itself is tested end to end in
tests/integration/test_mcp.py, through this lazy route."""

from __future__ import annotations

import subprocess
import sys

BUILD_THE_APP = """
import sys
from agentcell.server.app import create_app
from agentcell.server.settings import Settings
create_app(Settings(driver="fake", state_dir=sys.argv[1]))
print(sorted(m for m in sys.modules if m == "mcp" or m.startswith(("mcp.", "mcp_types"))))
"""


def test_building_the_app_imports_no_mcp(tmp_path: object) -> None:
    run = subprocess.run(
        [sys.executable, "-c", BUILD_THE_APP, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
