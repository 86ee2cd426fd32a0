"""The committed dashboard build is the one its sources produce.

`npm run build` stamps dist/SOURCE_HASH with a hash of every input (see
services/api/dashboard/scripts/stamp.mjs); this recomputes it, so a source change
committed without a rebuild (scripts/build_dashboard.sh) fails here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "services" / "api" / "dashboard"
INPUTS = ["index.html", "package.json", "package-lock.json", "vite.config.js", "public", "src"]


def source_hash() -> str:
    files: list[Path] = []
    for name in INPUTS:
        path = DASHBOARD / name
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    digest = hashlib.sha256()
    for relative in sorted(f.relative_to(DASHBOARD).as_posix() for f in files):
        digest.update(relative.encode() + b"\0")
        digest.update((DASHBOARD / relative).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def test_committed_build_matches_sources() -> None:
    stamped = (DASHBOARD / "dist" / "SOURCE_HASH").read_text().strip()
    assert stamped == source_hash(), "dashboard sources changed: run scripts/build_dashboard.sh and commit dist/"


def test_build_is_complete() -> None:
    index = (DASHBOARD / "dist" / "index.html").read_text()
    for asset in (DASHBOARD / "dist" / "assets").iterdir():
        if asset.suffix == ".js" and f"/assets/{asset.name}" in index:
            return
    raise AssertionError("dist/index.html names no built script")
