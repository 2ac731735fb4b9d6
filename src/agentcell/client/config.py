"""Where the SDK finds its server: the argument, else the environment, else the local default.

Read when a client is made, never at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from agentcell.client.errors import InvalidArgumentError

DEFAULT_API_URL = "http://127.0.0.1:8700"
API_URL_ENV = "AGENTCELL_URL"
API_KEY_ENV = "AGENTCELL_API_KEY"
STATE_DIR_ENV = "AGENTCELL_STATE_DIR"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """`request_timeout_s` bounds connecting and each wait for bytes of an ordinary request;
    command output streams wait as long as the command runs."""

    api_url: str
    api_key: str | None
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S

    @classmethod
    def resolve(
        cls, api_url: str | None = None, api_key: str | None = None, request_timeout_s: float | None = None
    ) -> ClientConfig:
        url = api_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL
        require_http_url(url, "api_url (CLI: --url)" if api_url else API_URL_ENV)
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or local_admin_key(url)
        timeout_s = DEFAULT_REQUEST_TIMEOUT_S if request_timeout_s is None else request_timeout_s
        return cls(api_url=url.rstrip("/"), api_key=key or None, request_timeout_s=timeout_s)

    def silence_limit_s(self, run_limit_s: float | None) -> float | None:
        """How long a command's output stream may go without a byte: as long as the command may
        run (`run_limit_s`; None: no limit, and no bound here either), then `request_timeout_s`
        for its end to arrive."""
        return None if run_limit_s is None else run_limit_s + self.request_timeout_s


def require_http_url(url: str, source: str) -> None:
    """InvalidArgumentError, before anything is sent, for a URL httpx could not use."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgumentError(
            f"{source} must be an http:// or https:// URL such as {DEFAULT_API_URL}, got {url!r}"
        )


def local_admin_key(url: str) -> str | None:
    """For a server on this machine, the admin key it wrote at its first start, when this user
    may read it (`<state dir>/admin.key`, mode 0600: the user who started the server)."""
    if urlsplit(url).hostname not in LOOPBACK:
        return None
    try:
        return local_admin_key_path().read_text().strip() or None
    except OSError:
        return None


def local_admin_key_path() -> Path:
    state = os.environ.get(STATE_DIR_ENV)
    if state is None:
        state = "/var/lib/agentcell" if os.geteuid() == 0 else str(Path.home() / ".local/state/agentcell")
    return Path(state) / "admin.key"


def missing_key_hint(url: str) -> str:
    """What to do when a request carried no key: the advice a 401 adds for SDK and CLI users."""
    hint = f"set {API_KEY_ENV} or pass api_key= (CLI: --api-key)"
    if urlsplit(url).hostname in LOOPBACK:
        where = local_admin_key_path()
        hint += (
            f"; a server on this machine writes its admin key to <state dir>/admin.key, and none "
            f"could be read from {where} (set {STATE_DIR_ENV} to the server's state dir, or run as "
            "the user who started it)"
        )
    return hint
