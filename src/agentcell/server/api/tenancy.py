"""The control plane's view of tenant namespaces: names in and out of the API are the tenant's
own (`chat`); the scheduler holds them qualified (`acme.chat`, see auth/names.py). A foreign
function or session answers exactly like an unknown one."""

from __future__ import annotations

from agentcell.errors import NotFound
from agentcell.protocol.functions import FunctionInfo
from agentcell.protocol.sessions import SessionInfo
from agentcell.server.auth.names import owned_by, qualify, split
from agentcell.server.auth.principal import current_tenant


def function_name(name: str) -> str:
    """The scheduler's name for the caller's function `name`. A name with a dot is no function's
    (they cannot hold one) and is not qualified: the default tenant's names are bare, so its
    `acme.chat` would be tenant acme's `chat`."""
    if "." in name:
        raise NotFound(f"function {name!r} not found: function names hold no '.'")
    return qualify(current_tenant(), name)


def is_mine(qualified: str) -> bool:
    return owned_by(current_tenant(), qualified)


def shown_function(info: FunctionInfo) -> FunctionInfo:
    name = split(info.name)[1]
    return info.model_copy(update={"name": name, "url_path": f"/fn/{name}/"})


def shown_session(info: SessionInfo) -> SessionInfo:
    if not is_mine(info.function):
        raise NotFound(f"session {info.id!r} not found")
    return info.model_copy(update={"function": split(info.function)[1]})
