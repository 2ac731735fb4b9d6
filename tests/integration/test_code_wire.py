"""The pure pieces of code execution, without a sandbox: how runner output is split into frames and
raw text, how an execution's output budget is kept, and what run requests may hold."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentcell.protocol.code import CodeContextCreate, CodeOutputEvent, CodeResultEvent, CodeRun
from agentcell.server.interpreter.execution import Execution
from agentcell.server.interpreter.runner import _Framer
from agentcell.server.interpreter.wire import JupyterSession, KernelMessage

MARKER = "\n[agentcell: output truncated after {} bytes; the rest is dropped]\n"


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


def stream(text: str, name: str = "stdout") -> KernelMessage:
    return KernelMessage("stream", {"name": name, "text": text})


def test_output_is_kept_up_to_the_budget_then_one_marker_and_nothing_more() -> None:
    """The message that crosses the budget gives its first bytes, then the marker; what follows is
    dropped, and `truncated_bytes` counts exactly the bytes dropped."""
    execution = Execution("ctx_1", max_output_bytes=10, started_at=0.0)
    first = execution.events(stream("12345678"))
    cut = execution.events(stream("abcdef"))
    later = execution.events(KernelMessage("display_data", {"data": {"text/plain": "x" * 100}}))
    assert first == [CodeOutputEvent(type="stdout", text="12345678")]
    assert [e.text for e in cut] == ["ab", MARKER.format(10)]  # type: ignore[union-attr]
    assert later == [] and execution.events(stream("more", "stderr")) == []
    end = execution.end(None, now=1.5)
    assert (end.truncated_bytes, end.status, end.duration_ms) == (4 + 100 + 4, "ok", 1500.0)


def test_one_message_larger_than_the_budget_keeps_its_head() -> None:
    """ipykernel merges a loop's prints into one message: its head is kept, not dropped whole."""
    execution = Execution("ctx_1", max_output_bytes=1 << 20, started_at=0.0)
    text = ("a" * 9999 + "\n") * 200
    head, marker = execution.events(stream(text, "stderr"))
    assert head == CodeOutputEvent(type="stderr", text=text[: 1 << 20])
    assert marker == CodeOutputEvent(type="stderr", text=MARKER.format(1 << 20))
    assert execution.end(None, now=0.0).truncated_bytes == len(text) - (1 << 20)


def test_the_cut_falls_on_a_character_boundary() -> None:
    """A multi-byte character that would straddle the budget is dropped whole and counted."""
    execution = Execution("ctx_1", max_output_bytes=5, started_at=0.0)
    head, _ = execution.events(stream("abcd\u00e9\u20acz"))  # é is 2 bytes, € 3
    assert head.text == "abcd"  # type: ignore[union-attr]
    assert execution.end(None, now=0.0).truncated_bytes == 2 + 3 + 1
    exact = Execution("ctx_1", max_output_bytes=6, started_at=0.0)
    head, _ = exact.events(stream("abcd\u00e9\u20acz"))
    assert head.text == "abcd\u00e9" and exact.end(None, now=0.0).truncated_bytes == 4  # type: ignore[union-attr]


def test_a_result_that_does_not_fit_is_dropped_whole_with_the_marker() -> None:
    """A MIME bundle (an image) is not cut: past the budget it goes whole, counted in bytes."""
    execution = Execution("ctx_1", max_output_bytes=100, started_at=0.0)
    assert len(execution.events(stream("x" * 40))) == 1
    image = {"image/png": "A" * 80, "text/plain": "<Figure \u00e9>"}
    (marker,) = execution.events(KernelMessage("display_data", {"data": image}))
    assert marker == CodeOutputEvent(type="stdout", text=MARKER.format(100))
    assert execution.end(None, now=0.0).truncated_bytes == 80 + len("<Figure \u00e9>".encode())
    left_out = Execution("ctx_1", max_output_bytes=100, started_at=0.0)  # by the kernel, as too large
    (marker,) = left_out.events(KernelMessage("display_data", {"data": {}, "agentcell_dropped_bytes": 9}))
    assert marker == CodeOutputEvent(type="stdout", text=MARKER.format(100))
    assert left_out.end(None, now=0.0).truncated_bytes == 9


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


@pytest.mark.parametrize(
    ("model", "body", "where"),
    [
        (CodeRun, {"code": "x = 1\x00"}, ("code",)),
        (CodeRun, {"code": "1", "env": {"OK": "fine", "A": "a\x00b"}}, ("env", "A")),
        (CodeContextCreate, {"env": {"B": "\x00"}}, ("env", "B")),
        (CodeContextCreate, {"cwd": "/tmp/\x00"}, ("cwd",)),
    ],
)
def test_a_nul_never_gets_past_the_wire_models(
    model: type[CodeRun], body: dict[str, object], where: tuple[str, ...]
) -> None:
    """Every entry point (REST, SDK, E2B, MCP) validates with these models, so a NUL, which kernels
    hang on or cut values at, is refused before any kernel sees it, naming the field."""
    with pytest.raises(ValidationError) as refused:
        model.model_validate(body)
    (error,) = refused.value.errors()
    assert error["loc"] == where and "may not contain a NUL" in error["msg"]
