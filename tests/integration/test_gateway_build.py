"""The gateway's mypyc build: `make setup` compiled it, it is what runs, and the sources run
instead when asked to or when one changed since (an edit is never silently ignored).

The rest of the suite exercises the compiled build; the last test here runs the proxy's own
tests on the sources, the fallback where no C compiler is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "agentcell" / "server" / "gateway"
PROBE = (
    "import agentcell.server.gateway as g, agentcell.server.gateway.connection as c, "
    "agentcell.server.gateway.exchange as e; print(g.BUILD, c.__file__, e.__file__)"
)


def _probe(env: dict[str, str], *, cwd: Path = REPO) -> tuple[list[str], str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split(), done.stderr


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AGENTCELL_PURE_PYTHON"}
    return {**env, **extra}


def test_setup_compiled_the_hot_modules_and_they_run() -> None:
    assert (PACKAGE / "compiled.json").exists(), "make setup did not compile the gateway"
    (build, connection, exchange), _ = _probe(_env())
    assert build == "compiled"
    assert connection.endswith(".so") and exchange.endswith(".so")


def test_agentcell_pure_python_runs_the_sources() -> None:
    (build, connection, exchange), _ = _probe(_env(AGENTCELL_PURE_PYTHON="1"))
    assert build == "source"
    assert connection == str(PACKAGE / "connection.py") and exchange == str(PACKAGE / "exchange.py")
    assert _probe(_env(AGENTCELL_PURE_PYTHON="0"))[0][0] == "compiled"  # (0 means off, not on)


def test_a_source_edited_since_the_build_has_all_of_them_run_from_source(tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(
        REPO / "src" / "agentcell", copy / "agentcell", ignore=shutil.ignore_patterns("__pycache__")
    )
    edited = copy / "agentcell" / "server" / "gateway" / "exchange.py"
    edited.write_text(edited.read_text() + "\nEDITED = True\n")
    (build, connection, exchange), stderr = _probe(_env(PYTHONPATH=str(copy)), cwd=tmp_path)
    assert build == "source"
    assert connection.endswith("connection.py") and exchange == str(edited)  # (all, not only the edited one)
    assert "older than their sources" in stderr


def test_the_proxy_behaves_the_same_on_its_sources() -> None:
    tests = ["tests/integration/test_gateway_proxy.py", "tests/unit/test_gateway_headers.py"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", *tests],
        env=_env(AGENTCELL_PURE_PYTHON="1"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:]
