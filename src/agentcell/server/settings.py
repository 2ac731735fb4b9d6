"""Settings: the only place that reads the environment. Built once at the entry point, passed down."""

from __future__ import annotations

import configparser
import os
import resource
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
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
    max_sandboxes: int = Field(
        default=4000, ge=1, description="sandboxes and function instances this node runs at once, together"
    )
    default_pids_max: int = Field(default=512, ge=16, description="processes per sandbox")
    sandbox_pool: int = Field(
        default=4,
        description="pre-started sandboxes of the default spec kept idle for creates to claim (0: off)",
    )
    sandbox_pool_max: int = Field(
        default=64,
        description="the pool grows to the most creates in flight at once of the last 10 minutes, up to this",
    )
    stop_grace_s: float = Field(default=2.0, ge=0, description="SIGTERM → SIGKILL grace when a sandbox stops")
    reap_interval_s: float = Field(
        default=0.5, gt=0, description="how often expired sandboxes are looked for"
    )
    paused_sandbox_retention_s: float = Field(
        default=7 * 24 * 3600,
        gt=0,
        description="a paused sandbox (and its saved files) is deleted this long after its pause",
    )
    max_waiting_requests: int = Field(
        default=64, ge=0, description="requests queued per function at max_instances"
    )
    wait_timeout_s: float = Field(default=10, gt=0, description="longest wait for a free instance, then 503")
    start_concurrency: int = Field(default=8, ge=1, description="instances booting at once")
    fn_domain: str | None = Field(default=None, description="route Host: {function}.{fn_domain} to functions")
    e2b_domain: str | None = Field(
        default=None, description="route Host: {port}-{sandbox id}.{e2b_domain} into sandboxes (E2B get_host)"
    )
    drain_timeout_s: float = Field(
        default=10, ge=0, description="in-flight requests get this long at shutdown"
    )
    request_timeout_s: float = Field(default=300, gt=0, description="default wait for a response head")
    header_timeout_s: float = Field(
        default=30, gt=0, description="a request head begun but not complete this long after gets 408"
    )
    body_timeout_s: float = Field(
        default=60,
        gt=0,
        description="a request body that stops arriving this long (between two reads) gets 408",
    )
    send_timeout_s: float = Field(
        default=60,
        gt=0,
        description="a client (or upstream) that takes no bytes sent to it this long is disconnected",
    )
    max_connections: int = Field(
        default=0,
        ge=0,
        description="client connections open at once, past which new ones get 503 "
        "(0: a quarter of the process's open-file limit, at most 10000)",
    )
    max_connections_per_client: int = Field(
        default=1000, ge=0, description="client connections open at once from one address (0: no limit)"
    )
    max_commands: int = Field(
        default=0,
        ge=0,
        description="commands (and terminals) running at once in all sandboxes together, past which a "
        "start gets 503 (0: what the server's open-file limit leaves after connections and sandboxes)",
    )
    max_json_body_bytes: int = Field(default=32 << 20, ge=1024, description="largest JSON request body")
    max_template_builds: int = Field(default=2, ge=1, description="template builds running at once")
    max_template_mb: int = Field(default=8192, ge=1, description="largest template layer on disk, in MiB")
    log_level: str = Field(default="info", description="debug, info, warning, error")
    log_format: Literal["text", "json"] = Field(
        default="text", description="log lines as text or JSON objects, with request/session/instance ids"
    )
    metrics: bool = Field(default=True, description="count metrics and serve them at GET /metrics")
    otlp_endpoint: str | None = Field(
        default=None, description="export OpenTelemetry traces over OTLP/HTTP here (needs the otel extra)"
    )
    trace_sample_ratio: float = Field(
        default=1.0, ge=0, le=1, description="share of function requests traced (session starts always are)"
    )
    sandbox_max_commands: int = Field(
        default=64,
        ge=1,
        description="commands one sandbox runs at once (foreground, background, terminals); past it 429",
    )
    sandbox_max_stdin_bytes: int = Field(
        default=64 << 20,
        ge=64 << 10,
        description="stdin written to one sandbox's commands that the server holds until they read it; "
        "a write past it waits up to 2 s, then 429",
    )
    code_max_contexts: int = Field(default=16, ge=1, description="code contexts (kernels) per sandbox")
    code_max_output_bytes: int = Field(
        default=16 << 20, ge=1024, description="output one code execution may stream; the rest is dropped"
    )
    code_interrupt_grace_s: float = Field(
        default=2.0, gt=0, description="a timed-out kernel that ignores its interrupt this long is restarted"
    )
    egress_proxy_port: int = Field(
        default=3128, ge=1, le=65535, description="port of the egress proxy on each sandbox's own loopback"
    )
    package_cache: bool = Field(
        default=True, description="serve sandboxes a node-local caching mirror of the pip and npm indexes"
    )
    pip_index_url: str | None = Field(
        default=None, description="index the pip mirror caches (default: the host's pip configuration)"
    )
    npm_registry: str | None = Field(
        default=None, description="registry the npm mirror caches (default: the host's npm configuration)"
    )
    store: str | None = Field(
        default=None,
        description="object store for workspaces: file:///dir or s3://bucket/prefix "
        "(default: <state_dir>/objects)",
    )
    s3_endpoint: str | None = Field(default=None, description="S3 endpoint URL (any S3-compatible service)")
    s3_region: str = Field(default="us-east-1", description="S3 region")
    s3_access_key: str | None = Field(default=None, description="S3 access key id")
    s3_secret_key: str | None = Field(default=None, description="S3 secret key", repr=False)
    s3_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="how long one S3 request may take before the store counts as unreachable (default 60)",
    )
    usage_interval_s: float = Field(default=60, gt=0, description="how often usage is written to the ledger")
    price_cpu_core_s: float = Field(default=0.0000125, ge=0, description="price of one core-second, active")
    price_memory_gib_s: float = Field(default=0.0000014, ge=0, description="price of a GiB-second, active")
    price_idle_memory_gib_s: float = Field(
        default=0.00000035, ge=0, description="price of a GiB-second while idle (no CPU is charged)"
    )
    price_storage_gib_h: float = Field(default=0.00003, ge=0, description="price of a stored GiB-hour")
    auth: Literal["off", "keys"] = Field(
        default="keys",
        description="keys: every request needs an API key (an admin key is made at first start and "
        "written to <state_dir>/admin.key); off: everyone acts as the default tenant's admin",
    )
    admin_key: str | None = Field(
        default=None, description="the bootstrap admin key to use instead of a random one", repr=False
    )
    tenant_storage_quota_mb: int = Field(
        default=0, ge=0, description="stored workspace bytes per tenant, in MiB (0: unlimited)"
    )
    history_retention_days: float = Field(
        default=400,
        gt=0,
        description="usage periods, audit records and ended sessions older than this are deleted",
    )

    @field_validator("sandbox_pool", "sandbox_pool_max")
    @classmethod
    def _pool_size(cls, size: int, info: ValidationInfo) -> int:
        if not 0 <= size <= MAX_SANDBOX_POOL:
            name = f"AGENTCELL_{(info.field_name or '').upper()}"
            raise ValueError(f"{name} must be between 0 and {MAX_SANDBOX_POOL}, got {size}")
        return size

    def host_pip_index_url(self) -> str:
        """AGENTCELL_PIP_INDEX_URL, else the host's pip configuration (PIP_INDEX_URL, pip.conf files),
        else what pip itself uses when nothing is configured."""
        return self.pip_index_url or _pip_configured_index() or PIP_DEFAULT_INDEX

    def host_npm_registry(self) -> str:
        """AGENTCELL_NPM_REGISTRY, else the host's npm configuration, else npm's own default."""
        return self.npm_registry or _npm_configured_registry() or NPM_DEFAULT_REGISTRY

    def connection_limit(self) -> int:
        """AGENTCELL_MAX_CONNECTIONS, else a quarter of the process's open-file limit (the rest is for
        sandboxes, upstream connections and files), at most DEFAULT_MAX_CONNECTIONS."""
        if self.max_connections:
            return self.max_connections
        return max(1, min(DEFAULT_MAX_CONNECTIONS, soft_open_files() // 4))


def soft_open_files() -> int:
    """The process's soft RLIMIT_NOFILE, which the budgets of connections, proxied connections
    and commands share (an unlimited one counts as 1,048,576)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


DEFAULT_MAX_CONNECTIONS = 10_000
"""the default cap on client connections where the open-file limit allows it"""
MAX_SANDBOX_POOL = 1000
"""a larger pool would hold more memory idle than any burst on one node needs"""
PIP_DEFAULT_INDEX = "https://pypi.org/simple"
"""pip's built-in default, used only when the host configures no index"""
NPM_DEFAULT_REGISTRY = "https://registry.npmjs.org/"
"""npm's built-in default, used only when the host configures no registry"""


def _pip_config_files() -> list[Path]:
    """pip's own order (site files last, so they win; PIP_CONFIG_FILE over all)."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    files = [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf")]
    files += [Path.home() / ".pip" / "pip.conf", Path(xdg) / "pip" / "pip.conf"]
    if os.environ.get("VIRTUAL_ENV"):
        files.append(Path(os.environ["VIRTUAL_ENV"]) / "pip.conf")
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return files


def _pip_configured_index() -> str | None:
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].split()[0]
    found = None
    for path in _pip_config_files():
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            continue
        for section in ("global", "install"):
            if parser.has_option(section, "index-url"):
                found = parser.get(section, "index-url").split()[0]
    return found


def _npm_configured_registry() -> str | None:
    configured = os.environ.get("npm_config_registry") or os.environ.get("NPM_CONFIG_REGISTRY")  # noqa: SIM112
    if configured:
        return configured
    found = None
    for path in (Path("/etc/npmrc"), Path("/usr/etc/npmrc"), Path.home() / ".npmrc"):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, sep, value = line.partition("=")
            if sep and key.strip() == "registry" and value.strip():
                found = value.strip()
    return found
