"""Pieces every wire model uses: the error envelope and the strict base model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


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
