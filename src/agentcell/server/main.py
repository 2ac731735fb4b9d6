"""The server's entry point: read settings once, configure logging, run uvicorn."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from agentcell.server.app import create_app
from agentcell.server.settings import Settings


def parse_overrides(argv: list[str] | None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="agentcell serve", description="run the agentcell server")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--driver", choices=["linux", "fake"])
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


def serve(argv: list[str] | None = None) -> None:
    settings = Settings(**parse_overrides(argv))  # type: ignore[arg-type]
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    app = create_app(settings)
    uvicorn.run(
        app, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
        log_level=settings.log_level, access_log=False, timeout_graceful_shutdown=10,
    )
