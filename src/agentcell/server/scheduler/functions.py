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

MAX_WARM_BACKOFF_S = 60.0


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
    failed_starts: int = 0
    """instances in a row that failed to start or died: the warm pool backs off (warm_retry_at)"""
    warm_retry_at: float = 0.0
    code_removed: set[int] = field(default_factory=set)
    """versions kept (the first) whose code directory is gone (or going): see drop_unused"""

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

    def drop_unused(self) -> tuple[list[str], list[int]]:
        """Older versions no instance runs any more (a version's sessions live on its instances):
        (their code directories, each given once; the numbers forgotten here, whose records go
        too). The latest stays, and the first's record (the function's creation time) without its
        code: memory, records and disk hold what is in use, however often a function is deployed."""
        running = {i.version for i in self.instances.values()}
        unused = [n for n in self.versions if n != self.latest.version and n not in running]
        code = [self.versions[n].code_dir for n in unused if n not in self.code_removed]
        first = min(self.versions)
        forgotten = [n for n in unused if n != first]
        for number in forgotten:
            del self.versions[number]
        self.code_removed = {n for n in (*self.code_removed, *unused) if n in self.versions}
        return code, forgotten

    def start_failed(self, now: float) -> float:
        """An instance failed to start (or died): the warm pool starts no more for 1 s, doubling
        with each failure in a row up to MAX_WARM_BACKOFF_S. Returns the wait."""
        self.failed_starts += 1
        wait = min(MAX_WARM_BACKOFF_S, 2.0 ** (self.failed_starts - 1))
        self.warm_retry_at = now + wait
        return wait

    def start_succeeded(self) -> None:
        self.failed_starts, self.warm_retry_at = 0, 0.0

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
