"""Wire models shared by the server, the SDK and the CLI: pydantic, no I/O."""
