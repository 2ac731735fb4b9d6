"""Local side of transfers: safe unpacking of archives and upload planning."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from agentcell.client import UnsafeArchiveError
from agentcell.client.transfer import extract_tree, is_multipart_safe, plan_upload


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
