"""The API reference in a real browser: Redoc renders our schema and nothing comes from a CDN."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser


def test_reference_renders_the_schema_without_other_hosts(
    live_server: Any, transactional_db: None, page: Page
) -> None:
    base_url = live_server.url
    fetched: list[str] = []
    blocked: list[tuple[str, str]] = []
    errors: list[str] = []
    page.on("requestfinished", lambda request: fetched.append(request.url))
    page.on("requestfailed", lambda request: blocked.append((request.url, request.failure or "")))
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(base_url + "/docs/")
    page.get_by_role("link", name="API reference").first.click()
    expect(
        page.get_by_role("heading", name="Create a chat completion (OpenAI-compatible)")
    ).to_be_visible()
    expect(
        page.get_by_role("heading", name="Create a message (Anthropic-compatible)")
    ).to_be_visible()

    def foreign(url: str) -> bool:
        return not url.startswith((base_url, "blob:", "data:"))

    assert errors == []
    assert [url for url in fetched if foreign(url)] == []
    # Redoc's footer asks for Redocly's logo from their CDN; the page's policy refuses it.
    # Refused by the browser before any connection, whether or not this machine is online.
    assert [(url, why) for url, why in blocked if foreign(url) and "csp" not in why.lower()] == []
