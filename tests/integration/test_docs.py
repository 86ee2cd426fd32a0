"""The API's own docs work offline: no asset comes from a CDN."""

from __future__ import annotations

import re

import httpx


async def test_docs_page_and_assets_are_served_locally(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert sources
    for source in sources:
        assert source.startswith("/"), f"external asset: {source}"
        assert (await client.get(source)).status_code == 200, source
    spec = (await client.get("/openapi.json")).json()
    assert "/api/train-skill/{skill_id}" in spec["paths"]
    assert (await client.get("/", follow_redirects=False)).headers["location"] == "/docs"
