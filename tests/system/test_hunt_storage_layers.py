"""Walking and removing template layers of any shape: deeper than Python's recursion limit and
PATH_MAX, with specials and links, never following a link out of the tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentcell.server.templates.layers import LayerRefused, remove_tree, seal_tree, tree_bytes


def deep(top: Path, levels: int, name: str = "d" * 200) -> None:
    """`levels` nested directories under `top`, each with a file, made with dir fds."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o4755, dir_fd=fd))
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.symlink("/etc", "out", dir_fd=fd)
        os.mkfifo("pipe", dir_fd=fd)
    finally:
        os.close(fd)


def test_remove_tree_takes_any_depth(tmp_path: Path) -> None:
    (tmp_path / "layer").mkdir()
    (tmp_path / "keep").mkdir()
    deep(tmp_path / "layer", 3000)
    os.symlink(tmp_path / "keep", tmp_path / "layer" / "link")
    remove_tree(tmp_path / "layer")
    assert sorted(os.listdir(tmp_path)) == ["keep"]
    remove_tree(tmp_path / "layer")  # gone already: fine


def test_walks_past_path_max_and_refuse_past_the_depth_limit(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    layer.mkdir()
    deep(layer, 40)  # 40 levels of 201 bytes: past PATH_MAX
    assert tree_bytes(layer) >= 81 * 4096  # 40 dirs, 40 files, a link, a fifo: 4 KiB at least each
    assert seal_tree(layer) > 0
    deepest = os.open(layer, os.O_RDONLY)
    for _ in range(40):
        deepest, parent = os.open("d" * 200, os.O_RDONLY, dir_fd=deepest), deepest
        os.close(parent)
    try:
        assert sorted(os.listdir(deepest)) == ["out"]  # the fifo went; the link stayed a link
        st = os.stat("..", dir_fd=deepest)
        assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o755)
        assert os.readlink("out", dir_fd=deepest) == "/etc"
    finally:
        os.close(deepest)
    deep(layer, 300, "e")
    with pytest.raises(LayerRefused, match="more than 256 levels deep"):
        tree_bytes(layer)
    remove_tree(layer)
