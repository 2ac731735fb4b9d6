"""E2B compatibility: E2B's control plane, envd and code-interpreter protocols over agentcell's
sandboxes, so the official `e2b` and `e2b-code-interpreter` SDKs work unchanged (docs/e2b.md)."""
