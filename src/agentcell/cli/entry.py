"""The `agentcell` console script: a plain `sandbox create` is answered before click and the SDK
are imported (agentcell.cli.quick); everything else is the full command line (agentcell.cli.main)."""

from __future__ import annotations

import sys


def main() -> None:
    from agentcell.cli.quick import run

    status = run(sys.argv[1:])
    if status is not None:
        sys.exit(status)
    from agentcell.cli.main import main as full

    full()
