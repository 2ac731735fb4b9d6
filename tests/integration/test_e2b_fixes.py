"""Checks of what reading E2B's own SDK test suites showed agentcell answering wrongly (now fixed):
default list order, symlink entries, a made context `cwd`, `deny_out`, a 400 rather than a 500 for
an unknown code language or a NUL in code, envd's message for an expired signature. Real SDKs, real server."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from e2b import (
    ALL_TRAFFIC,
    FileType,
    InvalidArgumentException,
    PtySize,
    Sandbox,
    SandboxException,
    SandboxNetworkOpts,
    SandboxQuery,
)
from e2b_code_interpreter import Sandbox as CodeSandbox

from tests.conftest import ServerProcess


@pytest.fixture(scope="module")
def code_sandbox(e2b_env: str) -> Iterator[CodeSandbox]:
    sandbox = CodeSandbox.create(timeout=120)
    yield sandbox
    sandbox.kill()


def _unexpected_errors(server: ServerProcess) -> int:
    return server.log_path.read_text(errors="replace").count("unexpected error in the E2B API")


def test_unknown_code_language_is_a_400_not_a_500(
    code_sandbox: CodeSandbox, shared_server: ServerProcess
) -> None:
    unexpected_before = _unexpected_errors(shared_server)
    for language in ("ts", "ruby"):
        with pytest.raises(SandboxException, match=r"^400 .*language must be one of"):
            code_sandbox.run_code("1", language=language)
    assert _unexpected_errors(shared_server) == unexpected_before
    assert code_sandbox.run_code("1 + 1").text == "2"


def test_nul_in_code_or_env_is_a_400_at_once(code_sandbox: CodeSandbox) -> None:
    """E2B's /execute refuses a NUL as agentcell's own API does, naming the field, instead of a
    kernel hanging on it until the timeout (and then losing its state)."""
    code_sandbox.run_code("before_nul = 3")
    with pytest.raises(SandboxException, match=r"^400 .*code: may not contain a NUL"):
        code_sandbox.run_code("\x00", timeout=10)
    with pytest.raises(SandboxException, match=r"^400 .*env\.A: may not contain a NUL"):
        code_sandbox.run_code("1", envs={"A": "a\x00b"}, timeout=10)
    assert code_sandbox.run_code("before_nul").text == "3"


def test_context_cwd_is_made_and_new_contexts_list_last(code_sandbox: CodeSandbox) -> None:
    context = code_sandbox.create_code_context(cwd="/home/user/made/here")
    assert code_sandbox.files.get_info("/home/user/made/here").type == FileType.DIR
    contexts = code_sandbox.list_code_contexts()
    assert [c.language for c in contexts[:2]] == ["python", "javascript"]
    assert contexts[-1].id == context.id
    assert code_sandbox.run_code("import os; os.getcwd()", context=context).text == "'/home/user/made/here'"
    with pytest.raises(SandboxException, match="403"):
        code_sandbox.create_code_context(cwd="/root")  # the sandbox user may not make it
    code_sandbox.remove_code_context(context)


def test_list_is_newest_first_unless_asked(make_sandbox: Callable[..., Sandbox]) -> None:
    tag = {"order_case": uuid.uuid4().hex}
    older, newer = make_sandbox(metadata=dict(tag)), make_sandbox(metadata=dict(tag))
    listed = [s.sandbox_id for s in Sandbox.list(query=SandboxQuery(metadata=tag)).next_items()]
    assert listed == [newer.sandbox_id, older.sandbox_id]
    ascending = Sandbox.list(query=SandboxQuery(metadata=tag), order="asc").next_items()
    assert [s.sandbox_id for s in ascending] == [older.sandbox_id, newer.sandbox_id]


def test_deny_all_traffic_is_no_network_and_other_denials_narrow_open(
    make_sandbox: Callable[..., Sandbox], api: httpx.Client
) -> None:
    closed = make_sandbox(network=SandboxNetworkOpts(deny_out=[ALL_TRAFFIC]))
    assert closed.get_info().allow_internet_access is False
    narrowed = make_sandbox(network=SandboxNetworkOpts(deny_out=["8.8.8.8", "10.0.0.0/8"]))
    assert narrowed.get_info().allow_internet_access is True
    network = api.get(f"/v1/sandboxes/{narrowed.sandbox_id}").json()["network"]
    assert network == {"egress": "open", "allow": [], "deny": ["8.8.8.8", "10.0.0.0/8"]}
    with pytest.raises(SandboxException, match=r"400: .*deny\[0\]: 'example\.com' is a name"):
        make_sandbox(network=SandboxNetworkOpts(deny_out=["example.com"]))


def test_symlinks_report_their_target(code_sandbox: CodeSandbox) -> None:
    code_sandbox.files.write("links/target.txt", "x")
    code_sandbox.commands.run(
        "ln -s target.txt link && ln -s missing dangling && ln -s link chain", cwd="links"
    )
    for name in ("link", "chain"):
        info = code_sandbox.files.get_info(f"links/{name}")
        assert (info.type, info.symlink_target) == (FileType.FILE, "/home/user/links/target.txt")
    dangling = code_sandbox.files.get_info("links/dangling")
    assert (dangling.type, dangling.symlink_target) == (FileType.SYMLINK, "missing")
    listed = {e.name: e.type for e in code_sandbox.files.list("links")}
    assert listed == {
        "chain": FileType.FILE,
        "dangling": FileType.SYMLINK,
        "link": FileType.FILE,
        "target.txt": FileType.FILE,
    }


def test_expired_signed_url_says_what_envd_says(code_sandbox: CodeSandbox) -> None:
    code_sandbox.files.write("signed.txt", "x")
    url = code_sandbox.download_url("signed.txt", "user", use_signature_expiration=-1)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url)
    assert (caught.value.code, caught.value.read()) == (
        401,
        b'{"code":401,"message":"signature is already expired"}',
    )
    caught.value.close()


def test_listing_too_many_entries_says_list_less_deep(code_sandbox: CodeSandbox) -> None:
    """A listing over the entry limit is the caller's to change (InvalidArgument), not the SDK's
    "rate limit exceeded" that a resource_exhausted code turns into."""
    made = code_sandbox.commands.run("mkdir -p many && cd many && seq 1 100001 | xargs touch", timeout=60)
    assert made.exit_code == 0
    with pytest.raises(InvalidArgumentException, match="holds over 100000 entries; list its subdirectories"):
        code_sandbox.files.list("/home/user/many")
    code_sandbox.commands.run("rm -rf many", timeout=60)


def test_a_bad_command_start_is_invalid_argument_naming_the_field(code_sandbox: CodeSandbox) -> None:
    """Fields envd's Start gets are checked as agentcell's own API checks them: an
    InvalidArgumentException that names the field, not an internal error."""
    with pytest.raises(InvalidArgumentException, match=r"env\.A B"):
        code_sandbox.commands.run("true", envs={"A B": "1"})
    with pytest.raises(InvalidArgumentException, match="may not contain a NUL"):
        code_sandbox.commands.run("echo a\x00b")
    with pytest.raises(InvalidArgumentException, match="cwd: may not contain a NUL"):
        code_sandbox.commands.run("true", cwd="/tmp\x00x", background=True)
    with pytest.raises(InvalidArgumentException, match=r"env\.A B"):
        code_sandbox.pty.create(PtySize(24, 80), envs={"A B": "1"})
    assert code_sandbox.commands.run("echo fine").stdout == "fine\n"
