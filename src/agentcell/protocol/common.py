"""Pieces every wire model uses: the error envelope and the strict base model."""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from annotated_types import MaxLen
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

_NUMBER_TYPES = (int, float)


class NumbersNotBooleans(BaseModel):
    """A request model that refuses true or false where a number is expected (pydantic would
    take them as 1 and 0: `{"timeout_s": true}` was a one-second timeout)."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: object, info: ValidationInfo) -> object:
        if (
            value.__class__ is bool
            and info.field_name
            and _is_number_only(cls.model_fields[info.field_name].annotation)
        ):
            raise ValueError("must be a number, not true or false")
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _not_past_max_length(cls, value: object, info: ValidationInfo) -> object:
        """A list or dict longer than its max_length is refused before its items are validated:
        pydantic counts after validating every item, and a body of a million bad keys made a
        million errors, whose listing held the server's event loop for ~10 s per request."""
        if isinstance(value, dict | list) and info.field_name:
            limit = _max_length(cls.model_fields[info.field_name].metadata)
            if limit is not None and len(value) > limit:
                raise ValueError(f"at most {limit} entries, got {len(value)}")
        return value


class WireModel(NumbersNotBooleans):
    """Base for request bodies: unknown fields are an error, so typos never pass silently; so is
    true or false where a number is expected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _not_flooded_with_fields(cls, data: object) -> object:
        """Refused whole, before pydantic makes an error of each unknown field (as for a list or
        dict past its max_length, in NumbersNotBooleans)."""
        if isinstance(data, dict) and len(data) > 2 * len(cls.model_fields) + 8:
            known = ", ".join(cls.model_fields)
            raise ValueError(f"{len(data)} fields given; this object takes only these: {known}")
        return data


def _max_length(metadata: list[Any]) -> int | None:
    return next((item.max_length for item in metadata if isinstance(item, MaxLen)), None)


def _is_number_only(annotation: Any) -> bool:
    """Whether a field of this type takes numbers but not booleans (`int`, `float | None`)."""
    kinds = _union_members(annotation)
    return bool not in kinds and any(isinstance(k, type) and issubclass(k, _NUMBER_TYPES) for k in kinds)


def _union_members(annotation: Any) -> list[Any]:
    """`int | None` → [int, NoneType]; `Annotated[X, ...]` → X's members."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _union_members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [kind for member in get_args(annotation) for kind in _union_members(member)]
    return [annotation]


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
