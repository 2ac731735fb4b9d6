"""/v1/templates and /v1/template-builds: build (streamed log), list, get, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from agentcell.protocol.templates import TemplateBuildInfo, TemplateBuildRequest, TemplateInfo, TemplateList
from agentcell.server.api.streaming import NDJSON, StreamingResponse, ndjson
from agentcell.server.templates.service import TemplateService

router = APIRouter(tags=["templates"])


async def _templates(request: Request) -> TemplateService:
    service: TemplateService = request.app.state.templates
    return service


Templates = Annotated[TemplateService, Depends(_templates)]


@router.post("/v1/templates", status_code=202)
async def build_template(body: TemplateBuildRequest, templates: Templates) -> TemplateBuildInfo:
    """Start a build; follow it at /v1/template-builds/{id}/events. The template appears in
    /v1/templates only once every step succeeded."""
    return templates.start_build(body).info()


@router.get("/v1/templates")
async def list_templates(templates: Templates) -> TemplateList:
    return TemplateList(templates=templates.list())


@router.get("/v1/templates/{name}")
async def get_template(name: str, templates: Templates) -> TemplateInfo:
    return templates.get(name)


@router.delete("/v1/templates/{name}", status_code=204)
async def delete_template(name: str, templates: Templates) -> Response:
    """Refused (409) while a running sandbox or function instance uses the template, a paused
    sandbox would resume from it, or a deployed function (of any tenant) starts its instances
    from it: none of them could start again after."""
    await templates.delete(name)
    return Response(status_code=204)


@router.get("/v1/template-builds/{build_id}")
async def get_build(build_id: str, templates: Templates) -> TemplateBuildInfo:
    return templates.build(build_id).info()


@router.get(
    "/v1/template-builds/{build_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {NDJSON: {}}, "description": "BuildEvent lines, ending with one `end`"}},
)
async def follow_build(build_id: str, templates: Templates) -> StreamingResponse:
    events = templates.build(build_id).events()
    return StreamingResponse(ndjson(events), media_type=NDJSON, headers={"cache-control": "no-store"})
