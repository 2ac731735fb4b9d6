"""InitChannel against a stand-in for the init on the other end of its socketpair: answers matched
by id whatever their order, exit reports, refusals and malformed answers, an init that goes away,
and a command started for a caller that gave up (killed, not left running unseen). The real init is in
tests/system/test_driver_init_commands.py."""

from __future__ import annotations

import array
import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest

from agentcell.server.sandbox.linux.init_channel import GONE, Forked, InitChannel, StartRefused


@pytest.fixture
async def pair() -> AsyncIterator[tuple[InitChannel, socket.socket]]:
    ours, theirs = InitChannel.pair()
    channel = InitChannel(ours)
    yield channel, theirs
    channel.close()
    theirs.close()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process to stand for a started command; a pidfd of it travels in the init's answer."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def request_of(init: socket.socket) -> tuple[list[str], list[int]]:
    message, ancillary, _, _ = init.recvmsg(4096, socket.CMSG_SPACE(4 * 5))
    fds = array.array("i")
    for _, _, data in ancillary:
        fds.frombytes(data)
    return message.decode().split("\0")[:-1], list(fds)


def answer(init: socket.socket, text: str, pidfd: int | None = None) -> None:
    rights = (
        [] if pidfd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pidfd]).tobytes())]
    )
    init.sendmsg([text.encode()], rights)


async def received(init: socket.socket, count: int) -> list[tuple[list[str], list[int]]]:
    """The next `count` requests (the channel sends once its caller's task runs)."""
    init.setblocking(False)
    got: list[tuple[list[str], list[int]]] = []
    while len(got) < count:
        try:
            got.append(request_of(init))
        except BlockingIOError:
            await asyncio.sleep(0.01)
    init.setblocking(True)
    return got


async def start_some(channel: InitChannel, init: socket.socket, count: int) -> list[asyncio.Future[Forked]]:
    """`count` starts in flight, their requests taken by the stand-in (their fds closed)."""
    stdio = os.open(os.devnull, os.O_RDWR)
    try:
        starts: list[asyncio.Future[Forked]] = [
            asyncio.ensure_future(channel.start("/", False, [stdio] * 4)) for _ in range(count)
        ]
        for _, fds in await received(init, count):
            for fd in fds:
                os.close(fd)
    finally:
        os.close(stdio)
    return starts


def answer_started(init: socket.socket, request_id: int, pid: int, process: subprocess.Popen[bytes]) -> None:
    pidfd = os.pidfd_open(process.pid)
    answer(init, f"S {request_id} {pid}", pidfd)
    os.close(pidfd)


async def test_answers_are_matched_by_id_and_carry_the_pids(
    pair: tuple[InitChannel, socket.socket], sleeper: subprocess.Popen[bytes]
) -> None:
    channel, init = pair
    stdio = os.open(os.devnull, os.O_RDWR)
    try:
        first = asyncio.ensure_future(channel.start("/home/user", False, [stdio] * 4))
        second = asyncio.ensure_future(channel.start("/tmp", True, [stdio] * 4))
        (first_args, first_fds), (second_args, second_fds) = await received(init, 2)
        assert first_args == ["1", "exec", "/home/user", "0"] and second_args == ["2", "exec", "/tmp", "1"]
        assert len(first_fds) == len(second_fds) == 4
        for fd in first_fds + second_fds:
            os.close(fd)
        answer(init, "F 2 cwd 2")
        answer_started(init, 1, 7, sleeper)
        forked = await first
        assert (forked.host_pid, forked.pid) == (sleeper.pid, 7)
        os.close(forked.pidfd)
        with pytest.raises(StartRefused, match=r"^cwd 2$"):
            await second
    finally:
        os.close(stdio)


async def test_an_exit_is_read_as_a_workers_control_line(
    pair: tuple[InitChannel, socket.socket], sleeper: subprocess.Popen[bytes]
) -> None:
    """`exit <code> <signal>` then end of file; has_more() reads what the init sent first (so that
    a pidfd opened while it is False names the command); the channel closing ends the others."""
    channel, init = pair
    starts = await start_some(channel, init, 2)
    for request_id in (1, 2):
        answer_started(init, request_id, request_id + 10, sleeper)
    first, second = [await start for start in starts]
    for forked in (first, second):
        os.close(forked.pidfd)
    assert not first.exit.has_more()
    answer(init, "X 1 3 0")
    assert first.exit.has_more() and not second.exit.has_more()
    assert (await first.exit.readline(), await first.exit.readline()) == ("exit 3 0", "")
    init.close()
    assert await asyncio.wait_for(second.exit.readline(), 10) == ""


async def test_a_malformed_answer_fails_its_start(pair: tuple[InitChannel, socket.socket]) -> None:
    channel, init = pair
    (start,) = await start_some(channel, init, 1)
    answer(init, "S 1 7")  # no pidfd
    with pytest.raises(StartRefused, match="malformed"):
        await start


async def test_an_init_that_goes_away_fails_every_start(pair: tuple[InitChannel, socket.socket]) -> None:
    channel, init = pair
    starts = await start_some(channel, init, 2)
    init.close()
    for start in starts:
        with pytest.raises(StartRefused, match=f"^{GONE}$"):
            await start
    assert channel.closed
    with pytest.raises(StartRefused, match=f"^{GONE}$"):
        await channel.start("/", False, [])


async def test_a_command_started_for_a_caller_that_gave_up_is_killed(
    pair: tuple[InitChannel, socket.socket], sleeper: subprocess.Popen[bytes]
) -> None:
    channel, init = pair
    (start,) = await start_some(channel, init, 1)
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    answer_started(init, 1, 7, sleeper)
    assert await asyncio.wait_for(asyncio.to_thread(sleeper.wait), 10) == -signal.SIGKILL
