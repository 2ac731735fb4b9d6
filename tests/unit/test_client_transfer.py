"""Local side of transfers: safe unpacking of archives and upload planning."""

from __future__ import annotations

import io
import logging
import os
import tarfile
from pathlib import Path

import pytest

from agentcell.client import InvalidArgumentError, UnsafeArchiveError
from agentcell.client.transfer import extract_tree, is_multipart_safe, plan_upload, require_utf8


def tar_of(*members: tuple[str, bytes | None, str | None]) -> io.BytesIO:
    """(name, data for a file / None for a dir, symlink target)"""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def test_tree_root_contents_land_in_dest(tmp_path: Path) -> None:
    """The archive's root is renamed to dest; links inside the tree are kept as links."""
    archive = tar_of(
        ("proj", None, None),
        ("proj/a.txt", b"A", None),
        ("proj/sub", None, None),
        ("proj/sub/b.txt", b"B", None),
        ("proj/link", None, "a.txt"),
        ("proj/abs", None, "/usr/bin/python3"),
    )
    extract_tree(archive, tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"A"
    assert (tmp_path / "out" / "sub" / "b.txt").read_bytes() == b"B"
    assert (tmp_path / "out" / "link").readlink() == Path("a.txt")
    assert (tmp_path / "out" / "abs").readlink() == Path("/usr/bin/python3")


@pytest.mark.parametrize(
    "evil",
    [
        ("/etc/evil", b"x", None),
        ("proj/../../evil", b"x", None),
        ("../evil", b"x", None),
    ],
)
def test_members_with_absolute_paths_or_dotdot_are_refused(
    tmp_path: Path, evil: tuple[str, bytes, None]
) -> None:
    """Nothing at all is written when any member would land outside dest."""
    with pytest.raises(UnsafeArchiveError):
        extract_tree(tar_of(("proj", None, None), ("proj/ok.txt", b"ok", None), evil), tmp_path / "out")
    assert not (tmp_path / "out" / "ok.txt").exists()
    assert not (tmp_path / "evil").exists()


def test_writing_through_a_symlink_to_outside_is_refused(tmp_path: Path) -> None:
    """A symlink to outside followed by a member under it is refused."""
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = tar_of(("proj", None, None), ("proj/esc", None, str(outside)), ("proj/esc/pwned", b"x", None))
    with pytest.raises(UnsafeArchiveError):
        extract_tree(archive, tmp_path / "out")
    assert not (outside / "pwned").exists()


def test_a_member_below_any_symlink_or_named_twice_is_refused(tmp_path: Path) -> None:
    """A tree's archive never has either. tarfile's own filter allows writing through a link that
    stays inside dest, and on some Python versions misses a chain of links that leaves it
    (CVE-2025-4517): so no member is ever written through a link of the archive."""
    through_inner_link = tar_of(
        ("proj", None, None), ("proj/sub", None, None), ("proj/l", None, "sub"), ("proj/l/f", b"x", None)
    )
    with pytest.raises(UnsafeArchiveError, match="below a symlink"):
        extract_tree(through_inner_link, tmp_path / "one")
    assert not (tmp_path / "one" / "sub" / "f").exists()
    outside = tmp_path / "outside"
    outside.mkdir()
    renamed = tar_of(
        ("proj", None, None), ("proj/d", None, str(outside)), ("proj/d", None, None), ("proj/d/f", b"x", None)
    )
    with pytest.raises(UnsafeArchiveError, match="named twice"):
        extract_tree(renamed, tmp_path / "two")
    assert list(outside.iterdir()) == []


def test_symlinks_are_made_after_the_files_whatever_their_order(tmp_path: Path) -> None:
    archive = tar_of(
        ("proj", None, None), ("proj/l", None, "sub/f"), ("proj/sub", None, None), ("proj/sub/f", b"F", None)
    )
    extract_tree(archive, tmp_path / "out")
    assert (tmp_path / "out" / "l").readlink() == Path("sub/f")
    assert (tmp_path / "out" / "l").read_bytes() == b"F"


def test_upload_plan_keeps_tree_names_and_empty_dirs(tmp_path: Path) -> None:
    """Files keep their path under their top directory; empty dirs are listed; missing sources raise."""
    (tmp_path / "proj" / "sub").mkdir(parents=True)
    (tmp_path / "proj" / "empty").mkdir()
    (tmp_path / "proj" / "sub" / "b.txt").write_text("b")
    (tmp_path / "one.txt").write_text("1")
    plan = plan_upload([tmp_path / "proj", str(tmp_path / "one.txt")])
    assert [name for _, name in plan.files] == ["proj/sub/b.txt", "one.txt"]
    assert plan.empty_dirs == ["proj/empty"]
    with pytest.raises(FileNotFoundError):
        plan_upload([tmp_path / "missing"])


def test_awkward_names_avoid_multipart() -> None:
    """Names with quotes, backslashes or newlines are kept out of Content-Disposition."""
    assert is_multipart_safe("dir/naïve file.txt")
    assert not is_multipart_safe('quote".txt') and not is_multipart_safe("new\nline")


def test_symlinks_out_of_the_tree_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Like rsync --safe-links: a link to a host file outside the tree (a hostile link in a cloned
    repository) is not followed, and says so; links that stay inside the tree are followed."""
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "shadow").symlink_to(secret)
    (tree / "sub" / "up").symlink_to("../../secret")
    (tree / "sub" / "chain").symlink_to("../shadow")
    (tree / "sub" / "inside").symlink_to("../a.txt")
    (tree / "loop").symlink_to("loop")
    with caplog.at_level(logging.WARNING, logger="agentcell.client.transfer"):
        plan = plan_upload([tree])
    assert [(name, path.read_text()) for path, name in plan.files] == [
        ("tree/a.txt", "a"),
        ("tree/sub/inside", "a"),
    ]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3 and all("outside the directory being copied" in m for m in warned)
    assert any(str(tree / "shadow") in m and str(secret) in m for m in warned)


def test_contents_of_a_directory_land_directly_in_the_remote_dir(tmp_path: Path) -> None:
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "a").write_text("a")
    (tmp_path / "tree" / "out").symlink_to(tmp_path / "elsewhere.txt")
    (tmp_path / "elsewhere.txt").write_text("host")
    plan = plan_upload([tmp_path / "tree"], contents=True)
    assert [name for _, name in plan.files] == ["a"]
    assert plan.empty_dirs == ["sub"]


def test_names_that_are_not_utf8_are_skipped_or_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Sandbox paths are text: inside a tree such a file (or directory) is skipped with a warning;
    named as a source it is a clean InvalidArgumentError naming it, never a UnicodeEncodeError."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ok").write_text("ok")
    bad = os.fsdecode(b"x\xffy")
    (tree / bad).write_text("bad")
    (tree / f"{bad}dir").mkdir()
    (tree / f"{bad}dir" / "inner").write_text("inner")
    with caplog.at_level(logging.WARNING, logger="agentcell.client.transfer"):
        plan = plan_upload([tree])
    assert [name for _, name in plan.files] == ["tree/ok"]
    assert len(caplog.records) == 2 and all("not UTF-8" in r.getMessage() for r in caplog.records)
    with pytest.raises(InvalidArgumentError, match=r"x\\xffy' is not valid UTF-8"):
        plan_upload([tree / bad])
    with pytest.raises(InvalidArgumentError, match="not valid UTF-8"):
        require_utf8(f"/home/user/{bad}")
