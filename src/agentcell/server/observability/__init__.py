"""Metrics, traces, the audit log and structured logs: what operators see of the server."""
