"""Settings: the only place that reads the environment. Built once at the entry point, passed down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/agentcell")
    return Path.home() / ".local" / "state" / "agentcell"


class Settings(BaseSettings):
    """Every knob, with its environment variable `AGENTCELL_<NAME>`. The README's table lists them."""

    model_config = SettingsConfigDict(env_prefix="AGENTCELL_", frozen=True, extra="ignore")

    host: str = Field(default="127.0.0.1", description="address the server listens on")
    port: int = Field(
        default=8700, ge=0, le=65535, description="port the server listens on (0: any free port)"
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir, description="database, helper binary, instances"
    )
    driver: Literal["linux", "fake"] = Field(
        default="linux", description="sandbox driver (fake: no isolation, tests)"
    )
    max_sandboxes: int = Field(default=4000, ge=1, description="running sandboxes this node accepts")
    default_pids_max: int = Field(default=512, ge=16, description="processes per sandbox")
    stop_grace_s: float = Field(default=2.0, ge=0, description="SIGTERM → SIGKILL grace when a sandbox stops")
    reap_interval_s: float = Field(
        default=0.5, gt=0, description="how often expired sandboxes are looked for"
    )
    max_waiting_requests: int = Field(
        default=64, ge=0, description="requests queued per function at max_instances"
    )
    wait_timeout_s: float = Field(default=10, gt=0, description="longest wait for a free instance, then 503")
    start_concurrency: int = Field(default=8, ge=1, description="instances booting at once")
    fn_domain: str | None = Field(default=None, description="route Host: {function}.{fn_domain} to functions")
    drain_timeout_s: float = Field(
        default=10, ge=0, description="in-flight requests get this long at shutdown"
    )
    request_timeout_s: float = Field(default=300, gt=0, description="default wait for a response head")
    max_json_body_bytes: int = Field(default=32 << 20, ge=1024, description="largest JSON request body")
    log_level: str = Field(default="info", description="debug, info, warning, error")
