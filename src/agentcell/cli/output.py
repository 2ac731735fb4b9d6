"""What the CLI prints for scripts: the `--json` flag and the one JSON document a command prints
with it (an object, or a list of objects for `ls`), always UTF-8 and always the same shape."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import click
from pydantic import BaseModel

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout instead of text."
)
"""For commands that print text by default: passes `as_json` to the command."""

json_always_option = click.option(
    "--json", is_flag=True, expose_value=False, help="Accepted for scripts: the output is JSON anyway."
)
"""For commands whose output is JSON already, so that scripts can pass --json to every command."""


def echo_json(document: object) -> None:
    """Print `document` (pydantic models, dataclasses, dicts and lists of them) as indented JSON.

    Written as UTF-8 bytes whatever the locale; a lone surrogate (undecodable command output)
    becomes its `\\udcXX` escape, which is still valid JSON."""
    text = json.dumps(to_plain(document), indent=2, ensure_ascii=False)
    click.echo(text.encode("utf-8", "backslashreplace"))


def to_plain(value: object) -> Any:
    """`value` as dicts, lists and scalars that `json.dumps` takes."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    return value
