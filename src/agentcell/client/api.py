"""The one place the SDK speaks HTTP: a connection pool, the error envelope, streamed answers.

Every SDK object sits on an `ApiClient`; whoever creates one closes it (`aclose`). httpx errors
never leave this module: they become `AgentcellConnectionError` naming the URL, and error
answers become the `AgentcellAPIError` subclass of their `code`.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import sys
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

if "httpx" not in sys.modules and "httpx._main" not in sys.modules:
    # `import httpx` imports httpx's own command line (click, rich, pygments: ~90 ms of CPU, when
    # they are installed) unless that import fails, as it does for a None in sys.modules. The SDK
    # never uses it; the stand-in goes once httpx is in, so a later `import httpx._main` works as
    # usual (only `httpx.main` stays the stub httpx keeps for a missing CLI).
    sys.modules["httpx._main"] = None  # type: ignore[assignment]
    try:
        import httpx
    finally:
        del sys.modules["httpx._main"]

import httpx
from pydantic import BaseModel, ValidationError

from agentcell import __version__
from agentcell.client.config import ClientConfig, missing_key_hint
from agentcell.client.errors import (
    API_ERRORS_BY_CODE,
    CODE_BY_STATUS,
    AgentcellAPIError,
    AgentcellConnectionError,
    AuthenticationError,
    ClientClosedError,
    InvalidArgumentError,
    ProtocolError,
)
from agentcell.protocol.common import REQUEST_ID_HEADER, ErrorEnvelope

M = TypeVar("M", bound=BaseModel)
Params = Mapping[str, str | int | list[str]]
Content = bytes | AsyncIterable[bytes]


def segment(value: str) -> str:
    """An id made safe to sit between two slashes of a URL path."""
    return quote(value, safe="")


def request_body(model: type[BaseModel], fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a request body with its wire model before sending it; only the given fields go out
    (an explicit None included), so the server's defaults apply to the rest. A refusal is the
    InvalidArgumentError the server would have answered."""
    try:
        return model.model_validate(fields).model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        raise InvalidArgumentError(describe_validation(exc)) from None


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:8]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def error_from_response(response: httpx.Response) -> AgentcellAPIError:
    """The exception for an error answer, from its envelope when it has one, else from its status."""
    status = response.status_code
    request_id = response.headers.get(REQUEST_ID_HEADER)
    try:
        envelope = ErrorEnvelope.model_validate_json(response.content)
        code, message, request_id = envelope.code, envelope.message, envelope.request_id
    except ValidationError:
        code = CODE_BY_STATUS.get(status, "internal" if status >= 500 else "invalid_argument")
        snippet = response.text.strip()[:200] or response.reason_phrase
        message = f"HTTP {status} from {response.request.url}: {snippet}"
    cls = API_ERRORS_BY_CODE.get(code) or API_ERRORS_BY_CODE.get(
        CODE_BY_STATUS.get(status, ""), AgentcellAPIError
    )
    retry_after_s = _retry_after_s(response.headers.get("retry-after"))
    return cls(message, code=code, status=status, request_id=request_id, retry_after_s=retry_after_s)


def _retry_after_s(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None  # an HTTP date: rare enough not to parse


def tls_verification(api_url: str) -> ssl.SSLContext | bool:
    """httpx's `verify` for a client of `api_url`: its default (certifi's CAs, or SSL_CERT_FILE /
    SSL_CERT_DIR) for https://; for http://, a context that trusts nothing. httpx builds the
    context when the client is made, TLS or not, and loading the CA bundle costs more CPU than a
    short script's requests. The client never speaks TLS to an http:// server (its paths are
    relative and it follows no redirect), and if it did, this context could only refuse. An https
    proxy from the environment is still verified with the default context (httpx gives proxies
    their own)."""
    return True if urlsplit(api_url).scheme != "http" else _trusting_nothing()


@functools.cache
def _trusting_nothing() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, hostname checked, no CA loaded


class ApiClient:
    """Owns one httpx.AsyncClient, hence one connection pool, for one SDK object."""

    def __init__(self, config: ClientConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"user-agent": f"agentcell-python/{__version__}"}
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key}"
        self.config = config
        self._http = httpx.AsyncClient(
            base_url=config.api_url,
            headers=headers,
            timeout=config.request_timeout_s,
            transport=transport,
            verify=tls_verification(config.api_url),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Params | None = None,
        content: Content | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request and read the whole answer; error answers raise."""
        with self.translating_errors():
            response = await self._http.request(
                method, path, json=json, params=params, content=content, headers=headers
            )
        if response.is_error:
            raise self._refusal(response)
        return response

    async def call_model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        response = await self.call(method, path, **kwargs)
        return parse_model(model, response)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Params | None = None,
        wait_forever: bool = False,
        run_limit_s: float | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """An answer whose body is read as it arrives. `wait_forever` lifts the read timeout, for
        command output that may be silent for as long as the command runs; `run_limit_s`, the
        command's own timeout, bounds that silence again (plus `request_timeout_s`), so that a
        server that hangs cannot hang a call whose command has a deadline."""
        limit_s = self.config.request_timeout_s
        timeout = httpx.Timeout(limit_s)
        if wait_forever:
            timeout = httpx.Timeout(limit_s, read=self.config.silence_limit_s(run_limit_s))
        with self.translating_errors():
            request = self._http.build_request(method, path, json=json, params=params, timeout=timeout)
            response = await self._http.send(request, stream=True)
            try:
                if response.is_error:
                    await response.aread()
                    raise self._refusal(response)
                yield response
            finally:
                await response.aclose()

    def _refusal(self, response: httpx.Response) -> AgentcellAPIError:
        """The error for an error answer; a 401 to a request that carried no key says how to give one."""
        error = error_from_response(response)
        if isinstance(error, AuthenticationError) and not self.config.api_key:
            error.message += f"; no API key was sent: {missing_key_hint(self.config.api_url)}"
            error.args = (error.message,)
        return error

    @contextlib.contextmanager
    def translating_errors(self) -> Iterator[None]:
        """httpx transport failures become AgentcellConnectionError naming the server URL; a call
        after aclose() is a ClientClosedError (httpx's own says only that the client is closed)."""
        url = self.config.api_url
        if self._http.is_closed:
            raise ClientClosedError(
                "this SDK object was closed (aclose()/close(), or its `with` block ended) and sends "
                "nothing more; make a new one. A sandbox closed with aclose()/close() still runs "
                "until killed or its timeout: Sandbox.connect(sandbox_id) reattaches to it"
            )
        try:
            yield
        except httpx.ConnectError as exc:
            raise AgentcellConnectionError(
                f"cannot connect to the agentcell server at {url} ({str(exc) or 'connection failed'}); "
                "is `agentcell serve` running? Point api_url, AGENTCELL_URL or --url at it",
                url=url,
            ) from exc
        except httpx.TimeoutException as exc:
            raise AgentcellConnectionError(
                f"the agentcell server at {url} did not answer in time ({type(exc).__name__})", url=url
            ) from exc
        except httpx.TransportError as exc:
            raise AgentcellConnectionError(
                f"the connection to the agentcell server at {url} failed: {str(exc) or type(exc).__name__}",
                url=url,
            ) from exc


def parse_model(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ProtocolError(
            f"{response.request.method} {response.request.url.path} answered something that is not a "
            f"{model.__name__}: {describe_validation(exc)}"
        ) from None
