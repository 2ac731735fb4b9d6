"""The breakout battery: from inside a process-tier sandbox, every way out must fail.

Each test runs real commands as the sandbox user in real namespaces and cgroups, and asserts
both the failure seen inside and, where it matters, that the host is unchanged.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from agentcell.server.sandbox.driver import ExecSpec, SandboxSpec
from agentcell.server.sandbox.linux.driver import LinuxDriver
from tests.system.conftest import is_running, run

pytestmark = pytest.mark.system

EPERM, ENOSYS = 1, 38

# Runs inside with Debian's python3: each privileged syscall, and the errno it came back with.
SYSCALL_PROBE = r"""
import ctypes, json, os, platform
libc = ctypes.CDLL(None, use_errno=True)
X86 = platform.machine() == "x86_64"
def err(ret):
    return 0 if ret >= 0 else ctypes.get_errno()
res = {}
res["mount"] = err(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
res["umount2"] = err(libc.umount2(b"/proc", 2))
res["ptrace_traceme"] = err(libc.ptrace(0, 0, None, None))
res["ptrace_attach_init"] = err(libc.ptrace(16, 1, None, None))
res["unshare_user"] = err(libc.unshare(0x10000000))
res["unshare_net"] = err(libc.unshare(0x40000000))
res["unshare_mnt"] = err(libc.unshare(0x00020000))
res["setns"] = err(libc.setns(os.open("/proc/self/ns/net", os.O_RDONLY), 0))
res["chroot"] = err(libc.chroot(b"/tmp"))
res["sethostname"] = err(libc.sethostname(b"evil", 4))
res["personality_exec"] = err(libc.personality(0x0400000))
numbers = {
    "init_module": 175 if X86 else 105,
    "finit_module": 313 if X86 else 273,
    "delete_module": 176 if X86 else 106,
    "kexec_load": 246 if X86 else 104,
    "bpf": 321 if X86 else 280,
    "keyctl": 250 if X86 else 219,
    "perf_event_open": 298 if X86 else 241,
    "userfaultfd": 323 if X86 else 282,
    "open_tree": 428,
    "fsopen": 430,
    "clone3": 435,
}
for name, nr in numbers.items():
    res[name] = err(libc.syscall(nr, 0, 0, 0, 0, 0))
print(json.dumps(res))
"""


def host_has_file(path: str) -> bool:
    return Path(path).exists()


def host_read(path: str) -> str:
    return Path(path).read_text()


async def test_host_secrets_are_not_there(linux_driver: LinuxDriver, sandbox: str) -> None:
    """/root, the driver's state dir and /etc/shadow do not exist inside."""
    state_file = linux_driver.state_dir / "instances" / f"{sandbox}.json"
    assert state_file.exists()
    for path in ("/root", str(state_file), str(linux_driver.state_dir), "/etc/shadow", "/etc/gshadow"):
        result = await run(linux_driver, sandbox, ["cat", path])
        assert result.code != 0, path
        assert "No such file or directory" in result.stderr, (path, result.stderr)
    listing = await run(linux_driver, sandbox, ["ls", "-A", "/"])
    assert set(listing.stdout.split()) <= {"bin", "dev", "etc", "home", "lib", "lib64", "proc", "run"} | {
        "sbin",
        "tmp",
        "usr",
        "var",
        "lib32",
        "libx32",
    }
    homes = await run(linux_driver, sandbox, ["ls", "-A", "/home"])
    assert homes.stdout.split() == ["user"]


async def test_usr_and_etc_are_not_writable(linux_driver: LinuxDriver, sandbox: str) -> None:
    result = await run(linux_driver, sandbox, ["touch", "/usr/bin/acell-breakout"])
    assert result.code != 0 and "Permission denied" in result.stderr
    result = await run(linux_driver, sandbox, ["sh", "-c", "echo evil::0:0::/:/bin/sh >> /etc/passwd"])
    assert result.code != 0
    assert not host_has_file("/usr/bin/acell-breakout")
    assert "evil" not in host_read("/etc/passwd")


async def test_proc_shows_only_the_sandbox(
    linux_driver: LinuxDriver, sandbox: str, host_sleeper: int
) -> None:
    script = "import os; print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))"
    process = await linux_driver.exec(sandbox, ExecSpec(argv=["python3", "-c", script]))
    out = await process.stdout.read()
    assert (await process.wait()).code == 0
    assert json.loads(out) == [1, process.pid]
    assert process.host_pid != process.pid  # the host sees it under another number


async def test_cannot_signal_a_host_process(
    linux_driver: LinuxDriver, sandbox: str, host_sleeper: int
) -> None:
    result = await run(linux_driver, sandbox, ["kill", "-9", str(host_sleeper)])
    assert result.code != 0
    result = await run(linux_driver, sandbox, ["sh", "-c", "kill -9 -1; true"])  # everything it may
    assert result.code == 0
    # host_sleeper's teardown asserts the host process survived


async def test_cannot_signal_another_sandbox(linux_driver: LinuxDriver, sandbox: str) -> None:
    await linux_driver.start(SandboxSpec(sandbox_id="sbx-2"))
    victim = await linux_driver.exec("sbx-2", ExecSpec(argv=["sleep", "300"]))
    result = await run(linux_driver, sandbox, ["kill", "-9", str(victim.host_pid)])
    assert result.code != 0
    await run(linux_driver, sandbox, ["sh", "-c", "kill -9 -1; true"])
    assert is_running(victim.host_pid)
    victim.send_signal(9)
    assert (await victim.wait()).signal == 9


async def test_no_network_but_loopback(linux_driver: LinuxDriver, sandbox: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        script = f"""
import json, socket
res = {{"interfaces": [name for _, name in socket.if_nameindex()]}}
for host, port in (("127.0.0.1", {port}), ("192.0.2.1", 80)):
    try:
        socket.create_connection((host, port), timeout=2).close()
        res[host] = "connected"
    except OSError as e:
        res[host] = e.errno
print(json.dumps(res))
"""
        result = await run(linux_driver, sandbox, ["python3", "-c", script])
        with pytest.raises(BlockingIOError):
            listener.accept()
    res = json.loads(result.stdout)
    assert res == {"interfaces": ["lo"], "127.0.0.1": 111, "192.0.2.1": 101}  # refused, unreachable


async def test_privileged_syscalls_are_refused(linux_driver: LinuxDriver, sandbox: str) -> None:
    """mount, ptrace, new namespaces (user ns included), modules, bpf... all EPERM; clone3 ENOSYS."""
    result = await run(linux_driver, sandbox, ["python3", "-c", SYSCALL_PROBE])
    assert result.code == 0, result.stderr
    errnos = json.loads(result.stdout)
    assert errnos.pop("clone3") == ENOSYS
    assert errnos == dict.fromkeys(errnos, EPERM)


async def test_mount_and_unshare_tools_fail(linux_driver: LinuxDriver, sandbox: str) -> None:
    for argv in (
        ["mount", "-t", "tmpfs", "none", "/tmp"],
        ["unshare", "-U", "-r", "true"],
        ["unshare", "-n", "true"],
    ):
        result = await run(linux_driver, sandbox, argv)
        assert result.code != 0, argv


async def test_threads_and_subprocesses_still_work(linux_driver: LinuxDriver, sandbox: str) -> None:
    """The filter refuses only new namespaces: plain clone (fork, threads) goes through."""
    script = (
        "import subprocess, threading; t = threading.Thread(target=print, args=('thread',)); t.start(); "
        "t.join(); print(subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip())"
    )
    result = await run(linux_driver, sandbox, ["python3", "-c", script])
    assert result.stdout.split() == ["thread", "child"]


async def test_runs_unprivileged(linux_driver: LinuxDriver, sandbox: str) -> None:
    result = await run(
        linux_driver, sandbox, ["grep", "-E", "^(Cap|NoNewPrivs|Seccomp:|Groups)", "/proc/self/status"]
    )
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines())
    assert {k: v.strip() for k, v in fields.items()} == {
        "Groups": "",
        "CapInh": "0000000000000000",
        "CapPrm": "0000000000000000",
        "CapEff": "0000000000000000",
        "CapBnd": "0000000000000000",
        "CapAmb": "0000000000000000",
        "NoNewPrivs": "1",
        "Seccomp": "2",
    }


async def test_init_is_out_of_reach(linux_driver: LinuxDriver, sandbox: str) -> None:
    """PID 1 ignores signals from inside and its memory cannot be read."""
    result = await run(linux_driver, sandbox, ["sh", "-c", "kill -TERM 1; kill -9 1; cat /proc/1/environ"])
    assert "Permission denied" in result.stderr
    assert (await run(linux_driver, sandbox, ["true"])).code == 0
    assert is_running(linux_driver.init_pid(sandbox))


async def test_init_names_nothing_of_the_host(linux_driver: LinuxDriver, sandbox: str) -> None:
    """`ps` inside shows PID 1 as `init`: not the helper's host path (the server's state dir) nor
    the server's host pid, which its command line once held."""
    result = await run(
        linux_driver, sandbox, ["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline; cat /proc/1/comm"]
    )
    assert result.code == 0, result.stderr
    assert result.stdout.split() == ["init", "init"], result.stdout
