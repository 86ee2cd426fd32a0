"""The API's docs and the dashboard work offline: no asset comes from a CDN."""

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


async def test_dashboard_is_served_at_root_with_local_assets(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache", "a new build must reach browsers at once"
    assert '<div id="app">' in page.text
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any(s.startswith("/assets/") and s.endswith(".js") for s in sources), sources
    for source in sources:
        assert source.startswith("/"), f"external asset: {source}"
        asset = await client.get(source)
        assert asset.status_code == 200, source
        if source.startswith("/assets/"):
            assert "immutable" in asset.headers["cache-control"], "hashed assets are cached for good"
        if source.endswith(".css"):
            assert not re.search(r"url\((?!data:)", asset.text), "a stylesheet loads an outside file"
    assert (await client.get("/assets/missing.js")).status_code == 404
