"""Pseudo-terminals for commands in a sandbox: allocated in the instance's own devpts, held node-side.

Every instance mounts a private devpts (`newinstance,ptmxmode=0666`) at /dev/pts, so its terminals
are numbered from 0 and invisible to the host and to other instances. The node opens that
instance's `ptmx` through `/proc/<init>/root` (openat2 confined to the root, no symlinks), so the
pty is allocated there; the slave is opened from the master (TIOCGPTPEER: no path lookup) and
checked to live on the instance's /dev/pts, then handed to the exec worker as the command's stdin,
stdout and stderr. The worker makes it the command's controlling terminal (`--tty`), after setsid,
before it drops to the sandbox user. The master never enters the sandbox: the node reads output
from it, writes input to it and sets the window size on it (the kernel sends SIGWINCH).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import stat
import struct
import termios

from agentcell.errors import Internal, NotRunning, QuotaExceeded
from agentcell.server.sandbox.driver import SANDBOX_UID, TerminalSize
from agentcell.server.sandbox.linux.fscalls import IN_ROOT, RESOLVE_NO_SYMLINKS, openat2

log = logging.getLogger(__name__)

TIOCSPTLCK = 0x40045431  # _IOW('T', 0x31, int): lock or unlock the slave
TIOCGPTPEER = 0x5441  # _IO('T', 0x41): open the slave of this master (Linux 4.13+)
PTMX_DEVICE = (5, 2)
MAX_TERMINALS = 64
"""the devpts `max=` helper.c mounts each sandbox's /dev/pts with"""
READ_BYTES = 64 * 1024
OUTPUT_LIMIT_BYTES = 256 * 1024
"""buffered output past which the node stops reading the master (the command then blocks)"""
HANGUP_AFTER_S = 0.5
"""how long after the command's exit the master stays open for output still in the terminal; a
background child still holding the terminal gets a hangup then"""


def open_terminal(init_pid: int, init_pidfd: int, size: TerminalSize) -> tuple[int, int]:
    """(master, slave) of a new pty in the instance's devpts, the slave owned by the sandbox user.
    The master is non-blocking; both are close-on-exec. The caller closes both."""
    try:
        root = os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotRunning(f"sandbox init {init_pid} is gone") from None
    try:
        try:
            signal.pidfd_send_signal(init_pidfd, 0)  # still that init, so `root` is its root
        except ProcessLookupError:
            raise NotRunning(f"sandbox init {init_pid} is gone") from None
        pts = openat2(root, "dev/pts", os.O_PATH | os.O_DIRECTORY, IN_ROOT | RESOLVE_NO_SYMLINKS)
        try:
            master = _open_master(root)
            try:
                slave = _open_slave(master, os.fstat(pts).st_dev)
            except BaseException:
                os.close(master)
                raise
        finally:
            os.close(pts)
    finally:
        os.close(root)
    resize(master, size)
    return master, slave


def _open_master(root: int) -> int:
    flags = os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK
    try:
        master = openat2(root, "dev/pts/ptmx", flags, IN_ROOT | RESOLVE_NO_SYMLINKS)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise QuotaExceeded(
                f"the sandbox has its {MAX_TERMINALS} terminals in use; close one (exit a shell)"
            ) from None
        raise Internal(f"cannot open the sandbox's terminal multiplexer: {exc}") from None
    info = os.fstat(master)
    if not stat.S_ISCHR(info.st_mode) or (os.major(info.st_rdev), os.minor(info.st_rdev)) != PTMX_DEVICE:
        os.close(master)
        raise Internal("the sandbox's /dev/pts/ptmx is not the pty multiplexer")
    return master


def _open_slave(master: int, devpts_dev: int) -> int:
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if os.fstat(slave).st_dev != devpts_dev:  # allocated anywhere but the instance's devpts
            raise Internal("the new terminal is not on the sandbox's /dev/pts")
        os.fchown(slave, SANDBOX_UID, SANDBOX_UID)  # as grantpt(3) would: the user's own tty
    except BaseException:
        os.close(slave)
        raise
    return slave


def resize(master: int, size: TerminalSize) -> None:
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))


class Terminal(asyncio.ReadTransport):
    """The node's end of one command's terminal: output into `output` (reading pauses while it
    holds more than OUTPUT_LIMIT_BYTES; StreamReader drives that through this transport), input
    written with backpressure, the window size. Output ends (EOF) once every slave fd is closed
    (the master reads EIO) or the master is closed."""

    def __init__(self, master: int) -> None:
        super().__init__()
        self.output = asyncio.StreamReader(limit=OUTPUT_LIMIT_BYTES // 2)
        self._master: int | None = master
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self._write_lock = asyncio.Lock()
        self._hangup: asyncio.TimerHandle | None = None
        self._write_ready: asyncio.Future[None] | None = None
        self.output.set_transport(self)
        self.resume_reading()

    # -- output ----------------------------------------------------------------------------------

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading and self._master is not None:
            self._loop.remove_reader(self._master)
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading and self._master is not None:
            self._loop.add_reader(self._master, self._on_readable)
            self._reading = True

    def _on_readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, READ_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: the last slave fd was closed; anything else ends it too
            if exc.errno != errno.EIO:
                log.warning("reading a terminal failed: %s", exc)
            data = b""
        if data:
            self.output.feed_data(data)
        else:
            self.close()

    # -- input and window ------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Type `data` into the terminal, whole, in order with other writes."""
        async with self._write_lock:
            view = memoryview(data)
            while view:
                if self._master is None:
                    raise NotRunning("the terminal is closed (its process has exited)")
                try:
                    view = view[os.write(self._master, view) :]
                except BlockingIOError:
                    await self._writable()
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    raise NotRunning("the terminal has hung up (its process has exited)") from None

    async def _writable(self) -> None:
        """Wait until the master takes input again (the command reads it) or is closed."""
        assert self._master is not None
        self._write_ready = self._loop.create_future()
        self._loop.add_writer(self._master, self._on_writable)
        try:
            await self._write_ready
        finally:
            self._on_writable()

    def _on_writable(self) -> None:
        if self._write_ready is None:
            return
        if self._master is not None:
            self._loop.remove_writer(self._master)
        if not self._write_ready.done():
            self._write_ready.set_result(None)
        self._write_ready = None

    def resize(self, size: TerminalSize) -> None:
        if self._master is None:
            raise NotRunning("the terminal is closed (its process has exited)")
        resize(self._master, size)

    # -- closing ---------------------------------------------------------------------------------

    def hang_up_later(self, delay_s: float = HANGUP_AFTER_S) -> None:
        """Close the master after `delay_s` unless output ended before: the command has exited."""
        if self._master is not None and self._hangup is None:
            self._hangup = self._loop.call_later(delay_s, self.close)

    def is_closing(self) -> bool:
        return self._master is None

    def close(self) -> None:
        if self._master is None:
            return
        self.pause_reading()
        self._on_writable()
        if self._hangup is not None:
            self._hangup.cancel()
        os.close(self._master)
        self._master = None
        self.output.feed_eof()
