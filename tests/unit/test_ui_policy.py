"""The UI page's Content-Security-Policy: what it allows is what a browser hashes."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from streams.http import admin


def allowed(policy: str, directive: str) -> set[str]:
    found = re.search(rf"{directive} ([^;]*)", policy)
    assert found is not None, policy
    return set(found.group(1).split())


def hashed(text: bytes) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(text).digest()).decode()}'"


async def test_a_page_with_crlf_line_ends_is_served_as_a_browser_hashes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkout with CRLF line ends served the page as it was, hashed as it was; a browser
    hashes the script after its parser made every line end a LF, so none matched and the
    page was blank."""
    page = tmp_path / "index.html"
    page.write_bytes(
        b'<style>\r\nb { }\r\n</style>\r\n<script type="module">\r\nlet a = 1;\r\n</script>'
    )
    monkeypatch.setattr(admin, "_UI", page)
    served = await admin.ui_page(make_mocked_request("GET", "/ui"))
    assert isinstance(served, web.Response)
    body = served.body
    assert isinstance(body, bytes)
    assert b"\r" not in body
    policy = served.headers["content-security-policy"]
    assert allowed(policy, "script-src") == {hashed(b"\nlet a = 1;\n")}
    assert allowed(policy, "style-src") == {hashed(b"\nb { }\n")}
    assert "frame-ancestors 'none'" in policy
    assert served.headers["x-frame-options"] == "DENY"


def test_the_shipped_page_has_one_script_and_one_style_each_allowed() -> None:
    policy = admin.ui_policy(admin._UI.read_bytes())
    assert len(allowed(policy, "script-src")) == 1
    assert len(allowed(policy, "style-src")) == 1
