"""Functions at run time: their immutable versions and the live state the scheduler keeps per function."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agentcell.protocol.functions import FunctionConfig, FunctionInfo
from agentcell.server.meta.records import FunctionRecord
from agentcell.server.scheduler.instances import Instance
from agentcell.server.scheduler.sessions import Session


@dataclass(frozen=True, slots=True)
class FunctionVersion:
    name: str
    version: int
    config: FunctionConfig
    code_dir: str
    created_at: float

    def record(self, updated_at: float) -> FunctionRecord:
        return FunctionRecord(
            name=self.name,
            version=self.version,
            config_json=self.config.model_dump_json(),
            code_dir=self.code_dir,
            created_at=self.created_at,
            updated_at=updated_at,
        )

    @classmethod
    def from_record(cls, record: FunctionRecord) -> FunctionVersion:
        config = FunctionConfig.model_validate(json.loads(record.config_json))
        return cls(record.name, record.version, config, record.code_dir, record.created_at)


@dataclass(slots=True, eq=False)
class FunctionState:
    """Everything the warm path needs about one function, in memory."""

    latest: FunctionVersion
    created_at: float
    versions: dict[int, FunctionVersion] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)
    warm: list[Instance] = field(default_factory=list)
    sessions: dict[str, Session] = field(default_factory=dict)
    ended_keys: set[str] = field(default_factory=set)
    waiting: int = 0
    capacity_changed: asyncio.Event = field(default_factory=asyncio.Event)
    deleted: bool = False

    @property
    def name(self) -> str:
        return self.latest.name

    @property
    def config(self) -> FunctionConfig:
        return self.latest.config

    def add_version(self, version: FunctionVersion) -> None:
        self.versions[version.version] = version
        if version.version >= self.latest.version:
            self.latest = version

    def live_instances(self) -> list[Instance]:
        return [i for i in self.instances.values() if i.is_live]

    def notify_capacity(self) -> None:
        """Wake requests waiting for an instance slot; they re-check and wait again if needed."""
        self.capacity_changed.set()
        self.capacity_changed = asyncio.Event()

    def info(self) -> FunctionInfo:
        return FunctionInfo(
            name=self.name,
            version=self.latest.version,
            config=self.config,
            created_at=datetime.fromtimestamp(self.created_at, UTC),
            updated_at=datetime.fromtimestamp(self.latest.created_at, UTC),
            url_path=f"/fn/{self.name}/",
            instances=len(self.live_instances()),
            warm_instances=sum(1 for i in self.live_instances() if i.is_ready and not i.sessions),
            sessions=len(self.sessions),
        )
