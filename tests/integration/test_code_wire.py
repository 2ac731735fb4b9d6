"""The pure pieces of code execution, without a sandbox: how runner output is split into frames and
raw text, and how an execution's output budget is kept."""

from __future__ import annotations

from agentcell.protocol.code import CodeOutputEvent, CodeResultEvent
from agentcell.server.interpreter.execution import Execution
from agentcell.server.interpreter.runner import _Framer
from agentcell.server.interpreter.wire import JupyterSession, KernelMessage


def test_frames_and_raw_text_are_told_apart_across_chunk_boundaries() -> None:
    framer = _Framer("stdout")
    data = 'child é\x1e{"msg_type":"stream","id":"a","content":{"name":"stdout","text":"x"}}\nafter'.encode()
    items = [item for i in range(len(data)) for item in framer.feed(data[i : i + 1])]
    frame = next(n for n, item in enumerate(items) if item.request_id == "a")
    parts = (items[:frame], items[frame + 1 :])
    text = ["".join(i.message.content["text"] for i in part if i.message) for part in parts]
    assert text == ["child é", "after"]  # raw bytes; the multi-byte character came split in two
    assert items[frame].message == KernelMessage("stream", {"name": "stdout", "text": "x"})


def test_a_broken_frame_is_raw_text() -> None:
    (item,) = _Framer("stdout").feed(b"\x1enot json\n")
    assert item.message == KernelMessage("stream", {"name": "stdout", "text": "\x1enot json\n"})


def test_stderr_frames_are_markers() -> None:
    items = _Framer("stderr").feed(b"warning\n\x1eabc\n")
    assert items[0].message is not None and items[0].message.content["text"] == "warning\n"
    assert items[1].marker == "abc"


def test_output_past_the_budget_is_dropped_after_one_marker() -> None:
    execution = Execution("ctx_1", max_output_bytes=10, started_at=0.0)
    first = execution.events(KernelMessage("stream", {"name": "stdout", "text": "12345678"}))
    cut = execution.events(KernelMessage("stream", {"name": "stdout", "text": "abcdef"}))
    later = execution.events(KernelMessage("display_data", {"data": {"text/plain": "x" * 100}}))
    assert first == [CodeOutputEvent(type="stdout", text="12345678")]
    assert len(cut) == 1 and "output truncated after 10 bytes" in cut[0].text  # type: ignore[union-attr]
    assert later == []
    end = execution.end(None, now=1.5)
    assert (end.truncated_bytes, end.status, end.duration_ms) == (106, "ok", 1500.0)


def test_results_keep_their_bundle_and_main_flag() -> None:
    execution = Execution("ctx_1", max_output_bytes=1 << 20, started_at=0.0)
    bundle = {"text/plain": "2", "application/json": {"a": 1}}
    (event,) = execution.events(KernelMessage("execute_result", {"data": bundle, "execution_count": 3}))
    assert event == CodeResultEvent(data=bundle, is_main_result=True)
    execution.events(KernelMessage("execute_reply", {"status": "ok", "execution_count": 3}))
    assert execution.end(None, now=0.0).execution_count == 3


def test_jupyter_messages_are_signed_and_checked() -> None:
    ours, kernel = JupyterSession(b"k"), JupyterSession(b"k")
    frames, msg_id = ours.request("execute_request", {"code": "1"})
    parsed = kernel.parse(frames)
    assert (parsed.msg_type, parsed.content) == ("execute_request", {"code": "1"})
    tampered = [*frames[:-1], b'{"code": "2"}']
    try:
        kernel.parse(tampered)
    except Exception as exc:
        assert "signature" in str(exc)
    else:
        raise AssertionError("a tampered message was accepted")
    assert msg_id
