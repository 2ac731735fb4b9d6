"""The sync twin of `AsyncTemplates` (see sync.py: every method is one line of delegation).

with Agentcell() as client:
    client.templates.build("data-science", load_recipe("templates/data-science/recipe.json"))
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping
from typing import Any

from agentcell.client.portal import EventLoopThread
from agentcell.client.templates import AsyncTemplates, EventCallback
from agentcell.protocol.egress import NetworkPolicy
from agentcell.protocol.templates import BuildEvent, Recipe, TemplateBuildInfo, TemplateInfo


class Templates:
    """`client.templates` (see AsyncTemplates). `on_event` runs on the SDK's loop thread."""

    def __init__(self, core: AsyncTemplates, portal: EventLoopThread) -> None:
        self._core = core
        self._portal = portal

    def build(
        self,
        name: str,
        recipe: Recipe | Mapping[str, Any],
        *,
        description: str | None = None,
        network: NetworkPolicy | Mapping[str, Any] | None = None,
        on_event: EventCallback | None = None,
    ) -> TemplateInfo:
        return self._portal.run(
            self._core.build(name, recipe, description=description, network=network, on_event=on_event)
        )

    def start_build(
        self,
        name: str,
        recipe: Recipe | Mapping[str, Any],
        *,
        description: str | None = None,
        network: NetworkPolicy | Mapping[str, Any] | None = None,
    ) -> TemplateBuildInfo:
        return self._portal.run(
            self._core.start_build(name, recipe, description=description, network=network)
        )

    def events(self, build_id: str) -> Iterator[BuildEvent]:
        return self._portal.iterate(self._core.events(build_id))

    def get_build(self, build_id: str) -> TemplateBuildInfo:
        return self._portal.run(self._core.get_build(build_id))

    def get(self, name: str) -> TemplateInfo:
        return self._portal.run(self._core.get(name))

    def list(self) -> builtins.list[TemplateInfo]:
        return self._portal.run(self._core.list())

    def delete(self, name: str) -> bool:
        return self._portal.run(self._core.delete(name))
