"""agentcell benchmarks. `make bench` runs them all; `make bench ONLY=<name>` runs one.

Each module `bench/<name>.py` has `main()`, prints one JSON object per line on stdout (see
`report.emit`), and compares against a baseline measured in the same run.
"""
