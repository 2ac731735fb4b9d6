from agentcell.server.main import serve

serve()
