"""Unit-test fixtures shared by the scheduler tests."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

ECHO = Path(__file__).resolve().parent.parent / "fixtures" / "echo_fn"


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "code.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(ECHO / "app.py", arcname="app.py")
    return path
