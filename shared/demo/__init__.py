"""The demo skill (the spec's Molasses Alchemist), loaded by `fastbrain dev`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEMO_FILE = Path(__file__).with_name("molasses-alchemist.json")


def demo_skill() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DEMO_FILE.read_text(encoding="utf-8"))
    return data
