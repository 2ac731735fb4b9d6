"""agentcell: a self-hosted, session-native serverless runtime for AI agents and their sandboxes."""

__version__ = "0.1.0"
