"""The gateway's access log: its lines look like every other log line, and are written in batches."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from agentcell.server.observability import access_log, logs
from agentcell.server.observability.access_log import AccessFields, AccessLog

NOW = 1_795_000_000.25
FIELDS: dict[str, Any] = {
    "request_id": "req_1",
    "method": "POST",
    "path": "/fn/chat/ask",
    "status": 200,
    "duration_ms": 1.25,
    "bytes_in": 10,
    "bytes_out": 20,
    "function": "chat",
    "session": "ses_1",
    "instance": "ins_1",
}


def fields(**changes: Any) -> AccessFields:
    return tuple({**FIELDS, **changes}.values())


@pytest.fixture(autouse=True)
def access_level() -> Iterator[logging.Logger]:
    logger = logging.getLogger(access_log.LOGGER)
    before = logger.level
    logger.setLevel(logging.INFO)
    yield logger
    logger.setLevel(before)


def as_logging_writes_it(formatter: logging.Formatter, message: str) -> str:
    record = logging.LogRecord(access_log.LOGGER, logging.INFO, __file__, 1, message, None, None)
    record.created, record.msecs = NOW, 250.0
    record.request_id, record.session, record.instance = "req_1", "ses_1", "ins_1"
    return formatter.format(record)


async def test_a_text_line_is_what_the_log_formatter_writes() -> None:
    stream = io.StringIO()
    log = AccessLog[AccessFields](stream, "text", clock=lambda: NOW)
    log.add(fields())
    log.close()
    message = '"POST /fn/chat/ask" 200 1.2ms in=10 out=20 fn=chat'
    assert stream.getvalue() == as_logging_writes_it(logging.Formatter(logs.TEXT_FORMAT), message) + "\n"


async def test_a_json_line_carries_every_field_and_escapes_the_path() -> None:
    stream = io.StringIO()
    log = AccessLog[AccessFields](stream, "json", clock=lambda: NOW)
    log.add(fields(path='/fn/chat/"quoted"\\é', session=None))
    log.close()
    line = json.loads(stream.getvalue())
    expected_time = json.loads(as_logging_writes_it(logs.JsonFormatter(), "x"))["time"]
    assert line["time"] == expected_time and line["level"] == "info" and line["logger"] == "agentcell.access"
    assert line["message"] == '"POST /fn/chat/"quoted"\\é" 200 1.2ms in=10 out=20'
    assert (line["request_id"], line["function"], line["session"], line["instance"]) == (
        "req_1",
        "chat",
        None,
        "ins_1",
    )
    assert (line["status"], line["duration_ms"], line["bytes_in"], line["bytes_out"]) == (200, 1.25, 10, 20)


async def test_lines_wait_for_the_flush_interval_then_go_out_together() -> None:
    stream = io.StringIO()
    log = AccessLog[AccessFields](stream, "text")
    log.add(fields())
    log.add(fields(request_id="req_2"))
    assert stream.getvalue() == ""
    await asyncio.sleep(access_log.FLUSH_S * 3)
    assert [line.split("[")[1].split()[0] for line in stream.getvalue().splitlines()] == ["req_1", "req_2"]
    log.close()


async def test_a_full_batch_is_written_at_once() -> None:
    stream = io.StringIO()
    log = AccessLog[AccessFields](stream, "text")
    for _ in range(access_log.FLUSH_LINES - 1):
        log.add(fields())
    assert stream.getvalue() == ""
    log.add(fields())
    assert len(stream.getvalue().splitlines()) == access_log.FLUSH_LINES
    log.close()


async def test_each_line_carries_the_time_its_request_was_logged_not_written() -> None:
    """Lines are formatted when their batch is written: each keeps its own request's time."""
    stream = io.StringIO()
    times = iter([NOW, NOW + 1.5])
    log = AccessLog[AccessFields](stream, "text", clock=lambda: next(times))
    log.add(fields())
    log.add(fields(request_id="req_2"))
    log.close()
    first, second = stream.getvalue().splitlines()
    assert first.split(" INFO ")[0].endswith(",250") and second.split(" INFO ")[0].endswith(",750")
    assert first.split(" INFO ")[0][:19] != second.split(" INFO ")[0][:19]


async def test_nothing_is_written_when_the_access_logger_is_off(access_level: logging.Logger) -> None:
    access_level.setLevel(logging.WARNING)
    stream = io.StringIO()
    log = AccessLog[AccessFields](stream, "text")
    log.add(fields())
    log.close()
    assert stream.getvalue() == ""


async def test_a_closed_stream_loses_the_lines_not_the_caller() -> None:
    stream = io.StringIO()
    log = AccessLog[AccessFields](stream, "text")
    log.add(fields())
    stream.close()
    log.close()  # no exception
    log.add(fields())
    log.close()
