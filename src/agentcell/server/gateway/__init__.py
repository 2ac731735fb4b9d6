"""The gateway: the data plane's HTTP/1.1 engine (`http1`), its router and session keys.

Its hot modules may run compiled by mypyc (`scripts/compile_gateway.py`, run by `make setup`);
`native.use_sources_when_stale()` runs first, so that a source edited since the build (or
AGENTCELL_PURE_PYTHON=1) has the sources imported instead.
"""

from agentcell.server.gateway.native import use_sources_when_stale

BUILD = use_sources_when_stale()
"""which build of the hot modules this process runs: "compiled" or "source" """
