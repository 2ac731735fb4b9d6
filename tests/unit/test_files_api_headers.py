"""The archive's Content-Disposition: any file name yields a header value HTTP accepts."""

from __future__ import annotations

from urllib.parse import unquote

import h11

from agentcell.server.api.files import attachment


def test_every_name_gives_a_valid_header_and_keeps_the_name_in_utf8() -> None:
    for name in ("plain.tar", "÷\b.tar", 'quo"te\\.tar', "tab\there\r\nx.tar", "日本.tar", "\x7f.tar"):
        value = attachment(name)
        assert all(" " <= c <= "~" for c in value), repr(value)
        h11.Response(status_code=200, headers=[("content-disposition", value)])  # raises if invalid
        assert unquote(value.rpartition("UTF-8''")[2]) == name
