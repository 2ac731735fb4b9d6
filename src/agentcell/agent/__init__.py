"""Code that runs inside instances. The process tier needs no resident agent (commands and files
are served from the node; see docs/design.md); this package is where the code-interpreter kernel
bridge will live. It shares only the wire contract (`agentcell.protocol`) with the server."""
