"""The programs kernels run inside a sandbox, shipped as package data (runtime/) and passed on
the command line, so that nothing has to be written into the sandbox before a kernel starts."""

from __future__ import annotations

import functools
from importlib import resources

PYTHON = "/usr/bin/python3"
NODE = "/usr/bin/node"
BASH = "/bin/bash"


@functools.cache
def runtime_source(name: str) -> str:
    return (resources.files("agentcell.server.interpreter") / "runtime" / name).read_text()
