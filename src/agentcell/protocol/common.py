"""Pieces every wire model uses: the error envelope and the strict base model."""

from __future__ import annotations

from pydantic import AfterValidator, BaseModel, ConfigDict


class WireModel(BaseModel):
    """Base for request bodies: unknown fields are an error, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ReplyModel(BaseModel):
    """Base for response bodies: clients ignore fields they do not know, so the server may add some."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class ErrorEnvelope(ReplyModel):
    code: str
    message: str
    request_id: str


REQUEST_ID_HEADER = "x-request-id"


def usable_request_id(value: str) -> bool:
    """Whether a request id a client sent can be kept (and echoed, and logged): 1 to 64
    printable ASCII characters. Otherwise the server makes its own."""
    return 0 < len(value) <= 64 and value.isascii() and value.isprintable()


# The one table from error codes (agentcell.errors) to HTTP statuses; the SDK reads it backwards.
STATUS_BY_CODE: dict[str, int] = {
    "invalid_argument": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "conflict": 409,
    "not_running": 409,
    "workspace_corrupt": 409,
    "payload_too_large": 413,
    "quota_exceeded": 429,
    "internal": 500,
    "unavailable": 503,
    "timeout": 504,
}


def _no_nul(text: str) -> str:
    if "\0" in text:
        raise ValueError("may not contain a NUL character (\\u0000): it is a C string in the sandbox")
    return text


NoNul = AfterValidator(_no_nul)
"""For strings that become C strings in a sandbox (argv, paths, env values): `Annotated[str, NoNul]`."""
