"""Tenants, API keys and the principal of a request."""
