"""An MCP server written with the official `mcp` SDK, served over Streamable HTTP on $PORT: what a
typical deployed MCP function looks like. Run by bench/mcp_rtt.py in an instance and on the host,
with the SDK installed next to it (`PYTHONPATH=site`)."""

import os

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

server = MCPServer("bench")
calls = 0


@server.tool()
def whoami() -> dict[str, object]:
    """who answered"""
    global calls
    calls += 1
    return {"instance": os.environ.get("AGENTCELL_INSTANCE_ID"), "pid": os.getpid(), "calls": calls}


security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
app = server.streamable_http_app(streamable_http_path="/mcp", transport_security=security)
uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", access_log=False)
