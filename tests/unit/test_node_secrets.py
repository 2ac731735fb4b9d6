"""node_secret: one key per name, made once, kept where only the server's user reads it."""

from __future__ import annotations

import stat
from pathlib import Path

from agentcell.server.node_secrets import KEY_BYTES, node_secret


def test_a_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    key = node_secret(tmp_path, "envd")
    assert len(key) == KEY_BYTES
    assert node_secret(tmp_path, "envd") == key
    assert node_secret(tmp_path, "traffic") != key
    directory = tmp_path / "secrets"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "envd").stat().st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["envd", "traffic"]  # no temp files left


def test_a_key_of_the_wrong_size_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir(mode=0o700)
    (tmp_path / "secrets" / "envd").write_bytes(b"short")
    key = node_secret(tmp_path, "envd")
    assert len(key) == KEY_BYTES and (tmp_path / "secrets" / "envd").read_bytes() == key
