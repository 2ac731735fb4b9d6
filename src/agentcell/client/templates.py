"""Templates (async core): build a recipe into a read-only layer, list, get, delete.

    recipe = load_recipe("./templates/data-science/recipe.json")   # local files inlined
    info = await client.templates.build("data-science", recipe, on_event=print)
    async with AsyncSandbox.create(template="data-science") as sbx: ...

A build runs on the server; `build` follows its event stream (step, log, end) and returns the
template, or raises TemplateBuildError carrying the build's error and the log it saw.
"""

from __future__ import annotations

import base64
import builtins
import inspect
import json
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from agentcell.client.api import ApiClient, describe_validation, parse_model, request_body, segment
from agentcell.client.errors import AgentcellClientError, InvalidArgumentError, NotFoundError, ProtocolError
from agentcell.protocol.egress import NetworkPolicy
from agentcell.protocol.templates import (
    BuildEndEvent,
    BuildEvent,
    BuildLogEvent,
    Recipe,
    TemplateBuildInfo,
    TemplateBuildRequest,
    TemplateInfo,
    TemplateList,
)

BUILD_EVENT: TypeAdapter[BuildEvent] = TypeAdapter(BuildEvent)
EventCallback = Callable[[BuildEvent], object]
"""Called with each build event as it arrives; may be a plain or an async function."""


class TemplateBuildError(AgentcellClientError):
    """A build ended `failed`: `error` says which step and how, `log` holds the output seen."""

    def __init__(self, name: str, build_id: str, error: str, log: str) -> None:
        super().__init__(f"template {name!r} failed to build ({build_id}): {error}")
        self.name = name
        self.build_id = build_id
        self.error = error
        self.log = log


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe JSON file. A `files` entry may name a local file with `src` (relative to the
    recipe's directory) instead of `content`: it is read and sent inline."""
    recipe_path = Path(path)
    try:
        raw = json.loads(recipe_path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"cannot read the recipe {recipe_path}: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidArgumentError(f"{recipe_path}: a recipe is a JSON object")
    raw["files"] = [_inline(entry, recipe_path.parent) for entry in raw.get("files", [])]
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise InvalidArgumentError(f"{recipe_path}: {describe_validation(exc)}") from None


def _inline(entry: Any, base: Path) -> Any:
    if not isinstance(entry, dict) or "src" not in entry:
        return entry
    source = base / str(entry.pop("src"))
    try:
        entry["content_b64"] = base64.b64encode(source.read_bytes()).decode()
    except OSError as exc:
        raise InvalidArgumentError(f"recipe file {source}: {exc.strerror}") from None
    entry.setdefault("path", source.name)
    return entry


class AsyncTemplates:
    """`client.templates`: the templates of one server."""

    def __init__(self, api: ApiClient) -> None:
        self._api = api

    async def build(
        self,
        name: str,
        recipe: Recipe | Mapping[str, Any],
        *,
        description: str | None = None,
        network: NetworkPolicy | Mapping[str, Any] | None = None,
        on_event: EventCallback | None = None,
    ) -> TemplateInfo:
        """Build and wait: the template once it is ready, TemplateBuildError if a step failed."""
        build = await self.start_build(name, recipe, description=description, network=network)
        log: list[str] = []
        async for event in self.events(build.id):
            if isinstance(event, BuildLogEvent):
                log.append(event.data)
            if on_event is not None and inspect.isawaitable(returned := on_event(event)):
                await returned
            if isinstance(event, BuildEndEvent):
                if event.state == "ready" and event.template is not None:
                    return event.template
                raise TemplateBuildError(name, build.id, event.error or "failed", "".join(log))
        raise ProtocolError(f"the build stream of {build.id} ended without its 'end' event")

    async def start_build(
        self,
        name: str,
        recipe: Recipe | Mapping[str, Any],
        *,
        description: str | None = None,
        network: NetworkPolicy | Mapping[str, Any] | None = None,
    ) -> TemplateBuildInfo:
        """Start a build and return at once; follow it with `events(build.id)`."""
        given: dict[str, Any] = {
            "name": name,
            "recipe": recipe,
            "description": description,
            "network": network,
        }
        body = request_body(TemplateBuildRequest, {k: v for k, v in given.items() if v is not None})
        return await self._api.call_model(TemplateBuildInfo, "POST", "/v1/templates", json=body)

    async def events(self, build_id: str) -> AsyncGenerator[BuildEvent, None]:
        """The build's events kept by the server, then live ones, up to and including `end`."""
        path = f"/v1/template-builds/{segment(build_id)}/events"
        async with self._api.stream("GET", path, wait_forever=True) as response:
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                try:
                    event = BUILD_EVENT.validate_json(line)
                except ValidationError:
                    raise ProtocolError(
                        f"the build stream sent a line that is not an event: {line[:200]!r}"
                    ) from None
                yield event
                if isinstance(event, BuildEndEvent):
                    return

    async def get_build(self, build_id: str) -> TemplateBuildInfo:
        return await self._api.call_model(
            TemplateBuildInfo, "GET", f"/v1/template-builds/{segment(build_id)}"
        )

    async def get(self, name: str) -> TemplateInfo:
        return await self._api.call_model(TemplateInfo, "GET", f"/v1/templates/{segment(name)}")

    async def list(self) -> builtins.list[TemplateInfo]:
        """`base` first, then the built templates by name."""
        response = await self._api.call("GET", "/v1/templates")
        return parse_model(TemplateList, response).templates

    async def delete(self, name: str) -> bool:
        """False if there was no such template; ConflictError while a sandbox uses it or would
        resume from it, or a deployed function names it."""
        try:
            await self._api.call("DELETE", f"/v1/templates/{segment(name)}")
        except NotFoundError:
            return False
        return True
