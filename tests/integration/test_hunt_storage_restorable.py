"""Whatever a sandbox leaves in its home, a pause that succeeds must resume: a snapshot the server
wrote and then cannot read back loses every file of the sandbox, not just the odd one."""

from __future__ import annotations

import httpx

from agentcell.client import Sandbox

# A symlink whose target is not UTF-8 (as `tar` or a hostile program leaves), and a file whose
# path is longer than PATH_MAX (made with relative mkdir/cd, as any program can).
ODD_TREE = r"""
cd
echo precious > keep.txt
ln -s "$(printf 'caf\351')" latin1.link
name=$(printf 'd%.0s' $(seq 250))
for i in $(seq 18); do mkdir "$name" && cd "$name" || exit 1; done
echo deep > deep.txt
"""


def test_a_pause_of_a_home_with_odd_names_resumes_with_its_files(server_url: str, api: httpx.Client) -> None:
    sbx = Sandbox.create(api_url=server_url, timeout_s=120)
    try:
        made = sbx.commands.run(ODD_TREE)
        assert made.exit_code == 0, made.stderr
        paused = api.post(f"/v1/sandboxes/{sbx.id}/pause")
        assert paused.status_code == 200, paused.json()
        resumed = api.post(f"/v1/sandboxes/{sbx.id}/resume")
        assert resumed.status_code == 200, resumed.json()
        assert sbx.files.read("/home/user/keep.txt") == b"precious\n"
        target = sbx.commands.run("cd; readlink -n latin1.link | od -An -c | tr -s ' '").stdout.split()
        assert target == ["c", "a", "f", "351"]
    finally:
        api.delete(f"/v1/sandboxes/{sbx.id}")
        sbx.close()


# 1,000,001 empty files: one more entry than a snapshot keeps (manifest.MAX_ENTRIES).
MANY = "cd && mkdir many && cd many && seq 1000001 | xargs touch && echo kept > ../keep.txt"


def test_a_home_with_more_entries_than_a_snapshot_keeps_is_refused_and_keeps_running(
    server_url: str, api: httpx.Client
) -> None:
    """The pause is refused with a reason before anything is stored (it used to "succeed" with a
    snapshot every resume refused: all files lost), and the sandbox runs on with its files."""
    sbx = Sandbox.create(api_url=server_url, memory_mb=2048, disk_mb=1024, timeout_s=300)
    try:
        made = sbx.commands.run(MANY, timeout_s=240)
        assert made.exit_code == 0, made.stderr
        paused = api.post(f"/v1/sandboxes/{sbx.id}/pause", timeout=240)
        assert paused.status_code == 409, paused.json()
        assert "more than 1000000 files, directories and links" in paused.json()["message"]
        assert api.get(f"/v1/sandboxes/{sbx.id}").json()["state"] == "running"
        assert sbx.files.read("/home/user/keep.txt") == b"kept\n"
    finally:
        api.delete(f"/v1/sandboxes/{sbx.id}")
        sbx.close()
