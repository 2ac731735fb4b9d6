"""Code that runs inside instances. The process tier needs no resident agent (commands and files
are served from the node; see docs/design.md), and code kernels need no bridge either: the node
starts them in the sandbox and talks to them directly (`agentcell.server.interpreter`, whose
in-sandbox programs are `server/interpreter/runtime/`). It shares only the wire contract
(`agentcell.protocol`) with the server."""
