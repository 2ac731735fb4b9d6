"""SQLite MetaStore (the embedded default): one file in WAL mode, all I/O on one worker thread."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple
from pathlib import Path
from typing import Any, TypeVar

from agentcell.server.meta.records import FunctionRecord, InstanceRecord, SessionRecord

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    name TEXT NOT NULL, version INTEGER NOT NULL, config_json TEXT NOT NULL, code_dir TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, function TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL,
    instance_id TEXT, state TEXT NOT NULL, end_reason TEXT, created_at REAL NOT NULL,
    last_active_at REAL NOT NULL, expires_at REAL NOT NULL, ttl_s INTEGER NOT NULL,
    idle_timeout_s INTEGER NOT NULL, metadata TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_live ON sessions (state);
CREATE INDEX IF NOT EXISTS sessions_key ON sessions (function, key);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY, function TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL,
    created_at REAL NOT NULL);
"""


def _session_row(r: SessionRecord) -> tuple[Any, ...]:
    return (*astuple(r)[:-1], json.dumps(r.metadata))


def _session(row: tuple[Any, ...]) -> SessionRecord:
    record = SessionRecord(*row[:-1])
    record.metadata = json.loads(row[-1])
    return record


class SqliteMetaStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in a transaction on the store's own thread. A cursor it returns is closed
        there: a cursor finalised later on the event loop's thread would touch the connection
        while the store's thread uses it (SQLite answers "bad parameter or other API misuse")."""

        def call() -> T:
            assert self._db is not None, "MetaStore used before open()"
            with self._db:
                result = work(self._db)
            if isinstance(result, sqlite3.Cursor):
                result.close()
                return None  # type: ignore[return-value]
            return result

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def open(self) -> None:
        def connect() -> None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self._path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

        await asyncio.get_running_loop().run_in_executor(self._pool, connect)

    async def aclose(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._pool, close)
        self._pool.shutdown(wait=True)

    async def put_function(self, record: FunctionRecord) -> None:
        await self._run(lambda db: db.execute("INSERT INTO functions VALUES (?,?,?,?,?,?)", astuple(record)))

    async def function_versions(self, name: str) -> list[FunctionRecord]:
        query = "SELECT * FROM functions WHERE name = ? ORDER BY version"
        rows = await self._run(lambda db: db.execute(query, (name,)).fetchall())
        return [FunctionRecord(*row) for row in rows]

    async def latest_functions(self) -> list[FunctionRecord]:
        query = (
            "SELECT f.* FROM functions f JOIN (SELECT name, MAX(version) v FROM functions GROUP BY name) m"
            " ON f.name = m.name AND f.version = m.v ORDER BY f.name"
        )
        rows = await self._run(lambda db: db.execute(query).fetchall())
        return [FunctionRecord(*row) for row in rows]

    async def delete_function(self, name: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM functions WHERE name = ?", (name,)))

    async def put_session(self, record: SessionRecord) -> None:
        await self.put_sessions([record])

    async def put_sessions(self, records: list[SessionRecord]) -> None:
        rows = [_session_row(r) for r in records]
        sql = "INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
        await self._run(lambda db: db.executemany(sql, rows))

    async def live_sessions(self) -> list[SessionRecord]:
        rows = await self._run(
            lambda db: db.execute("SELECT * FROM sessions WHERE state != 'ended'").fetchall()
        )
        return [_session(row) for row in rows]

    async def get_session(self, session_id: str) -> SessionRecord | None:
        row = await self._run(
            lambda db: next(
                iter(db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchall()), None
            )
        )
        return None if row is None else _session(row)

    async def ended_session_keys(self, function: str) -> set[str]:
        sql = "SELECT key FROM sessions WHERE function = ? AND state = 'ended'"
        rows = await self._run(lambda db: db.execute(sql, (function,)).fetchall())
        return {row[0] for row in rows}

    async def put_instance(self, record: InstanceRecord) -> None:
        await self._run(
            lambda db: db.execute("INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?)", astuple(record))
        )

    async def delete_instance(self, instance_id: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM instances WHERE id = ?", (instance_id,)))

    async def instances(self) -> list[InstanceRecord]:
        rows = await self._run(lambda db: db.execute("SELECT * FROM instances").fetchall())
        return [InstanceRecord(*row) for row in rows]
