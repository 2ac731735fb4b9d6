"""The MetaStore protocol: durable metadata. Never on the warm request path (the scheduler keeps
an in-memory index and writes through on state changes)."""

from __future__ import annotations

from typing import Protocol

from agentcell.server.meta.records import FunctionRecord, InstanceRecord, SessionRecord


class MetaStore(Protocol):
    async def open(self) -> None:
        """Create or migrate the schema. Called once by the app at start."""
        ...

    async def aclose(self) -> None: ...

    async def put_function(self, record: FunctionRecord) -> None:
        """Insert a new version (name, version) — versions are immutable."""
        ...

    async def function_versions(self, name: str) -> list[FunctionRecord]:
        """All versions of one function, oldest first; [] if unknown."""
        ...

    async def latest_functions(self) -> list[FunctionRecord]:
        """The newest version of every function."""
        ...

    async def delete_function(self, name: str) -> None:
        """Remove the function and all its versions (its sessions are the caller's business)."""
        ...

    async def put_session(self, record: SessionRecord) -> None:
        """Insert or replace by id."""
        ...

    async def put_sessions(self, records: list[SessionRecord]) -> None:
        """Insert or replace many in one transaction (periodic last-active flush)."""
        ...

    async def live_sessions(self) -> list[SessionRecord]:
        """Sessions whose state is not `ended`."""
        ...

    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def ended_session_keys(self, function: str) -> set[str]:
        """Keys of ended sessions of a function (for disable_session_id_reuse)."""
        ...

    async def put_instance(self, record: InstanceRecord) -> None: ...

    async def delete_instance(self, instance_id: str) -> None: ...

    async def instances(self) -> list[InstanceRecord]: ...
