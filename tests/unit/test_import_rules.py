"""The layering rules of DESIGN.md, checked in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "trl")


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return {line.split(".")[0] for line in out.stdout.splitlines()}


def test_api_never_imports_ml_libraries() -> None:
    loaded = _loaded_after("from services.api.app import create_app")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_gpu_package_never_imports_api_worker_or_sqlalchemy() -> None:
    sources = list((REPO / "services" / "gpu").rglob("*.py"))
    assert sources
    for path in sources:
        text = path.read_text()
        for forbidden in ("services.api", "services.worker", "sqlalchemy", "shared.db", "shared.events"):
            assert forbidden not in text, f"{path.name} imports {forbidden}"
    loaded = _loaded_after("import services.gpu.trainer, services.gpu.inference")
    assert "sqlalchemy" not in loaded
