"""What E2B's own code-interpreter test suite expects of `run_code` and code contexts, checked in our
words with the pinned `e2b-code-interpreter` SDK (sync and async) against a real agentcell server:
one callback per output, errors with their value, figures as PNG with text, contexts listed in
order with their cwd, env vars of the sandbox and of one execution in every kernel, and a sandbox
killed under a running async execution. docs/e2b.md lists what agentcell does not meet (other
kernels, bare JavaScript strings)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from e2b import SandboxException
from e2b_code_interpreter import AsyncSandbox, Sandbox

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURE = "import matplotlib.pyplot as plt\nplt.plot([0, 1, 2], [1, 0, 1])\nplt.show()\n"


@pytest.fixture(scope="module")
def sbx(e2b_env: str) -> Iterator[Sandbox]:
    """One code sandbox, created with env vars; tests keep to their own names and contexts."""
    sandbox = Sandbox.create(timeout=300, envs={"FROM_SANDBOX": "sandbox-wide"})
    yield sandbox
    sandbox.kill()


def collector() -> tuple[list[Any], Callable[[Any], None]]:
    seen: list[Any] = []
    return seen, seen.append


# -- run_code ----------------------------------------------------------------------------------------


def test_each_output_reaches_its_callback_once(sbx: Sandbox) -> None:
    results, on_result = collector()
    assert sbx.run_code("value_here = 1; value_here", on_result=on_result).text == "1"
    assert [r.text for r in results] == ["1"]
    errors, on_error = collector()
    failed = sbx.run_code("never_defined", on_error=on_error)
    assert failed.error is not None and len(errors) == 1
    assert (failed.error.name, failed.error.value) == ("NameError", "name 'never_defined' is not defined")
    out, on_stdout = collector()
    printed = sbx.run_code("print('to stdout')", on_stdout=on_stdout)
    assert [m.line for m in out] == printed.logs.stdout == ["to stdout\n"]
    err, on_stderr = collector()
    warned = sbx.run_code("import sys; print('to stderr', file=sys.stderr)", on_stderr=on_stderr)
    assert [m.line for m in err] == warned.logs.stderr == ["to stderr\n"]


def test_a_figure_is_png_with_text_and_a_result_of_its_own(sbx: Sandbox) -> None:
    results, on_result = collector()
    execution = sbx.run_code(FIGURE + "'last value'", on_result=on_result)
    assert len(results) == 2 == len(execution.results)
    figure, last = execution.results
    assert figure.png and base64.b64decode(figure.png).startswith(PNG_MAGIC)
    assert figure.text and "Figure" in figure.text
    assert (last.text, last.is_main_result, figure.is_main_result) == ("'last value'", True, False)


def test_kernels_start_in_the_home_directory(sbx: Sandbox) -> None:
    python = sbx.run_code("from pathlib import Path; print(Path.cwd())")
    assert python.logs.stdout == ["/home/user\n"]
    javascript = sbx.run_code("console.log('from node'); process.cwd()", language="js")
    assert javascript.logs.stdout == ["from node\n"]
    assert javascript.text == "'/home/user'"  # quoted: Node's inspect, see docs/e2b.md


def test_env_vars_of_the_sandbox_and_of_one_execution(sbx: Sandbox) -> None:
    """Every kernel sees the sandbox's env vars; `envs` on one run adds or overrides for that run
    only."""
    bash = [
        sbx.run_code("echo $FROM_SANDBOX ${ONE_RUN:-unset}", language="bash", envs=envs).logs.stdout
        for envs in ({"ONE_RUN": "bar", "FROM_SANDBOX": "overridden"}, None)
    ]
    assert bash == [["overridden bar\n"], ["sandbox-wide unset\n"]]
    js = [
        sbx.run_code(
            "`${process.env.FROM_SANDBOX} ${process.env.ONE_RUN || 'unset'}`", language="js", envs=envs
        ).text
        for envs in ({"ONE_RUN": "bar", "FROM_SANDBOX": "overridden"}, None)
    ]
    assert js == ["'overridden bar'", "'sandbox-wide unset'"]
    python = "import os; os.environ['FROM_SANDBOX'], os.environ.get('ONE_RUN')"
    assert sbx.run_code(python, envs={"FROM_SANDBOX": "overridden"}).text == "('overridden', None)"
    assert sbx.run_code(python).text == "('sandbox-wide', None)"


# -- contexts ----------------------------------------------------------------------------------------


def test_new_contexts_are_listed_last_with_their_language_and_cwd(sbx: Sandbox) -> None:
    plain = sbx.create_code_context()
    assert (plain.language, plain.cwd) == ("python", "/home/user")
    placed = sbx.create_code_context(language="python", cwd="/home/user/ctx_test")
    listed = sbx.list_code_contexts()
    assert [(c.id, c.language, c.cwd) for c in listed[-2:]] == [
        (plain.id, "python", "/home/user"),
        (placed.id, "python", "/home/user/ctx_test"),
    ]
    sbx.remove_code_context(plain.id)
    sbx.remove_code_context(placed)
    assert {plain.id, placed.id}.isdisjoint(c.id for c in sbx.list_code_contexts())


def test_a_restarted_context_forgets_its_names(sbx: Sandbox) -> None:
    context = sbx.create_code_context()
    sbx.run_code("kept_until_restart = 1", context=context)
    sbx.restart_code_context(context.id)
    after = sbx.run_code("kept_until_restart", context=context)
    assert after.error is not None
    assert (after.error.name, after.error.value) == ("NameError", "name 'kept_until_restart' is not defined")
    sbx.remove_code_context(context)


# -- async ---------------------------------------------------------------------------------------------


async def test_async_contexts_and_callbacks(sbx: Sandbox) -> None:
    asbx = await AsyncSandbox.connect(sbx.sandbox_id)
    context = await asbx.create_code_context(cwd="/home/user/async_ctx")
    assert (await asbx.list_code_contexts())[-1].cwd == "/home/user/async_ctx"
    results, on_result = collector()
    errors, on_error = collector()
    done = await asbx.run_code("n = 2; n * 21", context=context, on_result=on_result)
    await asbx.run_code("missing_name", context=context, on_error=on_error)
    assert (done.text, [r.text for r in results], [e.name for e in errors]) == ("42", ["42"], ["NameError"])
    await asbx.restart_code_context(context)
    await asbx.remove_code_context(context.id)


async def test_async_run_code_reports_a_sandbox_killed_under_it(e2b_env: str) -> None:
    asbx = await AsyncSandbox.create(timeout=60)
    await asbx.run_code("1")  # the kernel is up: the kill lands during the execution, not its start
    running = asyncio.create_task(asbx.run_code("import time; time.sleep(60)"))
    await asyncio.sleep(1.0)
    await asbx.kill()
    with pytest.raises(SandboxException, match="sandbox was killed while the request was in progress"):
        await running
