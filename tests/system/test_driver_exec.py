"""What a command inside a process-tier sandbox sees and gets back: the everyday contract."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
from pathlib import Path

import pytest

from agentcell.errors import Conflict, InvalidArgument, NotFound, NotRunning
from agentcell.server.sandbox.driver import ExecSpec, Mount, SandboxSpec
from agentcell.server.sandbox.linux.driver import LinuxDriver
from agentcell.server.sandbox.linux.process import start_process
from tests.system.conftest import run

pytestmark = pytest.mark.system

DEV_ENTRIES = ["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty"]
DEV_ENTRIES += ["urandom", "zero"]
ECHO_SERVER = """
import socket
server = socket.create_server(("127.0.0.1", 8000))
print("listening", flush=True)
conn, _ = server.accept()
conn.sendall(conn.recv(16).upper())
"""


async def test_python_and_node_run(linux_driver: LinuxDriver, sandbox: str) -> None:
    assert (await run(linux_driver, sandbox, ["python3", "-c", "print(6*7)"])).stdout == "42\n"
    assert (await run(linux_driver, sandbox, ["node", "-e", "console.log(6*7)"])).stdout == "42\n"


async def test_runs_as_the_sandbox_user(linux_driver: LinuxDriver, sandbox: str) -> None:
    result = await run(linux_driver, sandbox, ["id"])
    assert result.stdout == "uid=1000(user) gid=1000(user) groups=1000(user)\n"
    result = await run(linux_driver, sandbox, ["sh", "-c", 'echo "$HOME $USER $PWD $HOSTNAME"; hostname'])
    assert result.stdout == f"/home/user user /home/user {sandbox}\n{sandbox}\n"


async def test_exit_codes_and_signals(linux_driver: LinuxDriver, sandbox: str) -> None:
    assert (await run(linux_driver, sandbox, ["sh", "-c", "exit 3"])).status.code == 3
    killed = await run(linux_driver, sandbox, ["sh", "-c", "kill -TERM $$"])
    assert (killed.status.code, killed.status.signal) == (143, signal.SIGTERM)
    missing = await run(linux_driver, sandbox, ["no-such-command"])
    assert missing.code == 127 and "no-such-command" in missing.stderr


async def test_send_signal(linux_driver: LinuxDriver, sandbox: str) -> None:
    process = await linux_driver.exec(sandbox, ExecSpec(argv=["sleep", "300"]))
    process.send_signal(signal.SIGTERM)
    status = await asyncio.wait_for(process.wait(), 10)
    assert (status.code, status.signal) == (143, signal.SIGTERM)
    process.send_signal(signal.SIGKILL)  # after exit: a no-op, not an error


async def test_stdin_streams_through(linux_driver: LinuxDriver, sandbox: str) -> None:
    process = await linux_driver.exec(sandbox, ExecSpec(argv=["cat"]))
    await process.write_stdin(b"hello ")
    await process.write_stdin(b"sandbox\n")
    assert await process.stdout.readline() == b"hello sandbox\n"
    await process.close_stdin()
    assert await process.stdout.read() == b""
    assert (await process.wait()).code == 0


async def test_stdout_and_stderr_are_separate(linux_driver: LinuxDriver, sandbox: str) -> None:
    result = await run(linux_driver, sandbox, ["sh", "-c", "echo out; echo err >&2"])
    assert (result.stdout, result.stderr) == ("out\n", "err\n")


async def test_cwd(linux_driver: LinuxDriver, sandbox: str) -> None:
    assert (await run(linux_driver, sandbox, ["pwd"], cwd="/tmp")).stdout == "/tmp\n"
    await run(linux_driver, sandbox, ["mkdir", "project"])
    assert (await run(linux_driver, sandbox, ["pwd"], cwd="project")).stdout == "/home/user/project\n"
    with pytest.raises(InvalidArgument, match=f"cwd /nope does not exist in sandbox {sandbox}"):
        await run(linux_driver, sandbox, ["pwd"], cwd="/nope")  # the start fails: it never ran


async def test_env_layers(linux_driver: LinuxDriver) -> None:
    """Base env, then the sandbox's, then the command's: later wins."""
    await linux_driver.start(SandboxSpec(sandbox_id="env", env={"A": "sandbox", "B": "sandbox"}))
    result = await run(linux_driver, "env", ["env"], env={"B": "exec", "LANG": "C"})
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert env["A"] == "sandbox" and env["B"] == "exec" and env["LANG"] == "C"
    assert env["PATH"] == "/home/user/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert {env["HOME"], env["USER"], env["LOGNAME"], env["SHELL"]} == {"/home/user", "user", "/bin/bash"}
    with pytest.raises(InvalidArgument):
        await linux_driver.exec("env", ExecSpec(argv=["true"], env={"BAD=KEY": "x"}))


async def test_tmp_is_a_writable_tmpfs(linux_driver: LinuxDriver, sandbox: str) -> None:
    script = "stat -f -c %T /tmp; echo data > /tmp/f; cat /tmp/f; echo home > ~/g; cat ~/g; ls -ld /tmp"
    result = await run(linux_driver, sandbox, ["sh", "-c", script])
    lines = result.stdout.splitlines()
    assert lines[:3] == ["tmpfs", "data", "home"]
    assert lines[3].startswith("drwxrwxrwt")


async def test_dev_is_minimal_and_works(linux_driver: LinuxDriver, sandbox: str) -> None:
    script = (
        "ls /dev | tr '\\n' ' '; echo; head -c 4 /dev/zero | wc -c; head -c 4 /dev/urandom | wc -c; "
        "echo x > /dev/null && echo null-ok; "
        "python3 -c 'import os, pty; m, s = pty.openpty(); print(\"pty-ok\")'"
    )
    result = await run(linux_driver, sandbox, ["sh", "-c", script])
    lines = result.stdout.splitlines()
    assert lines[0].split() == DEV_ENTRIES
    assert lines[1:] == ["4", "4", "null-ok", "pty-ok"], result.stderr


async def test_concurrent_commands(linux_driver: LinuxDriver, sandbox: str) -> None:
    results = await asyncio.gather(*(run(linux_driver, sandbox, ["echo", str(i)]) for i in range(20)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(20)]


async def test_usage_reports_the_cgroup(linux_driver: LinuxDriver, sandbox: str) -> None:
    await run(linux_driver, sandbox, ["python3", "-c", "sum(range(3_000_000))"])
    usage = await linux_driver.usage(sandbox)
    assert usage.cpu_ns > 1_000_000
    assert 0 < usage.memory_bytes <= usage.memory_peak_bytes
    assert usage.pids >= 1


async def test_unknown_ids_and_duplicates(linux_driver: LinuxDriver, sandbox: str) -> None:
    with pytest.raises(NotFound):
        await linux_driver.exec("nope", ExecSpec(argv=["true"]))
    with pytest.raises(NotFound):
        await linux_driver.usage("nope")
    with pytest.raises(NotFound):
        linux_driver.files("nope")
    with pytest.raises(Conflict):
        await linux_driver.start(SandboxSpec(sandbox_id=sandbox))
    with pytest.raises(InvalidArgument):
        await linux_driver.start(SandboxSpec(sandbox_id="../escape"))
    with pytest.raises(InvalidArgument):
        await linux_driver.exec(sandbox, ExecSpec(argv=[]))
    await linux_driver.stop("never-started")  # a no-op


async def test_wait_exited_and_not_running(linux_driver: LinuxDriver, sandbox: str) -> None:
    """When the init dies (here: killed from the host), waiters wake and exec says NotRunning."""
    waiters = [asyncio.ensure_future(linux_driver.wait_exited(sandbox)) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    os.kill(linux_driver.init_pid(sandbox), signal.SIGKILL)
    await asyncio.wait_for(asyncio.gather(*waiters), 10)
    with pytest.raises(NotRunning):
        await linux_driver.exec(sandbox, ExecSpec(argv=["true"]))
    await linux_driver.stop(sandbox)


async def test_files_are_rooted_in_the_sandbox(linux_driver: LinuxDriver, sandbox: str) -> None:
    pytest.importorskip("agentcell.server.sandbox.linux.files")
    await run(linux_driver, sandbox, ["sh", "-c", "echo inside > ~/note.txt"])
    files = linux_driver.files(sandbox)
    assert files is linux_driver.files(sandbox)
    stat = await files.stat("/home/user/note.txt")
    assert stat.size == len("inside\n")


async def test_connect_reaches_a_server_inside(linux_driver: LinuxDriver, sandbox: str) -> None:
    """Ingress: the node opens a TCP connection to 127.0.0.1:port in the sandbox's network."""
    server = await linux_driver.exec(
        sandbox,
        ExecSpec(argv=["python3", "-c", ECHO_SERVER]),
    )
    assert await server.stdout.readline() == b"listening\n"
    sock = await linux_driver.connect(sandbox, 8000)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, b"ping")
        assert await loop.sock_recv(sock, 16) == b"PING"
    finally:
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        await linux_driver.connect(sandbox, 8001)
    with pytest.raises(NotFound):
        await linux_driver.connect("nope", 8000)
    assert (await server.wait()).code == 0


async def test_host_directories_can_be_mounted(linux_driver: LinuxDriver, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text("print('from the host')\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    scratch.chmod(0o777)
    mounts = (Mount(str(code), "/code"), Mount(str(scratch), "/home/user/scratch", read_only=False))
    await linux_driver.start(SandboxSpec(sandbox_id="mounts", mounts=mounts))
    assert (await run(linux_driver, "mounts", ["python3", "app.py"], cwd="/code")).stdout == "from the host\n"
    denied = await run(linux_driver, "mounts", ["touch", "/code/new"])
    assert denied.code != 0 and "Read-only file system" in denied.stderr
    assert (await run(linux_driver, "mounts", ["touch", "/home/user/scratch/made-inside"])).code == 0
    assert (scratch / "made-inside").exists()
    with pytest.raises(InvalidArgument):
        await linux_driver.start(SandboxSpec(sandbox_id="bad", mounts=(Mount(str(code), "/usr/lib/x"),)))


async def test_a_cancelled_wait_can_be_followed_by_a_kill(linux_driver: LinuxDriver, sandbox: str) -> None:
    """The scheduler's timeout: wait() is cancelled, then SIGKILL, then wait() again."""
    process = await linux_driver.exec(sandbox, ExecSpec(argv=["bash", "-c", "sleep 30"]))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(process.wait(), 0.3)
    process.send_signal(signal.SIGKILL)
    status = await asyncio.wait_for(process.wait(), 5)
    assert (status.code, status.signal) == (137, signal.SIGKILL)


async def test_commands_inherit_only_stdio(linux_driver: LinuxDriver, sandbox: str) -> None:
    """No fd of the server or the helper (control pipe, env memfd, init pidfd) leaks in."""
    script = "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))"
    result = await run(linux_driver, sandbox, ["python3", "-c", script])
    assert result.stdout == "[0, 1, 2, 3]\n"  # 3: the directory listdir reads


def dead_process_pidfd() -> tuple[int, int]:
    """The pid and a pidfd of a process that has exited and been reaped."""
    dead = subprocess.Popen(["true"])
    pidfd = os.pidfd_open(dead.pid)
    dead.wait()
    return dead.pid, pidfd


async def test_exec_into_a_dead_init_is_not_running(linux_driver: LinuxDriver, sandbox: str) -> None:
    """An exec worker (an adopted instance's commands) enters through the node's pidfd of the
    init: once that process is gone, even a recycled pid cannot take the command anywhere else."""
    pid, pidfd = dead_process_pidfd()
    try:
        alive = linux_driver._instances[sandbox].target
        target = dataclasses.replace(alive, init_pid=pid, init_pidfd=pidfd, channel=None)
        with pytest.raises(NotRunning, match="gone"):
            await start_process(target, ["true"], "/", {})
    finally:
        os.close(pidfd)
