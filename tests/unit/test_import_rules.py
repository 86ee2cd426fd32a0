"""The layering rules of DESIGN.md: import-linter contracts (static), plus what actually loads (runtime)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
from importlinter.api import read_configuration

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "trl")

# (source, forbidden) pairs the contracts in pyproject.toml must keep covering.
REQUIRED_RULES = {
    "services.api": {*HEAVY, "services.worker"},
    "services.gpu": {"services.api", "services.worker", "sqlalchemy", "shared.db", "shared.events"},
    "services.worker": {"services.api"},
    "shared": {"services"},
    "shared.rules": {"torch", "transformers", "sqlalchemy"},
    "shared.schemas": {"torch", "transformers", "sqlalchemy"},
    "shared.errors": {"torch", "transformers", "sqlalchemy"},
}


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return {line.split(".")[0] for line in out.stdout.splitlines()}


def test_import_contracts_hold() -> None:
    """Every import counts here, also one inside a function or through another module."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"],
        cwd=REPO,  # reads [tool.importlinter] from pyproject.toml
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


def test_contracts_cover_the_design_rules() -> None:
    config = read_configuration(str(REPO / "pyproject.toml"))
    assert str(config["session_options"].get("include_external_packages")).lower() == "true"
    covered: dict[str, set[str]] = {}
    for contract in config["contracts_options"]:
        assert contract["type"] == "forbidden", contract
        for source in contract["source_modules"]:
            covered.setdefault(source, set()).update(contract["forbidden_modules"])
    for source, forbidden in REQUIRED_RULES.items():
        assert forbidden <= covered.get(source, set()), f"{source}: no contract forbids {forbidden - covered[source]}"


def test_gpu_side_imports_from_shared_only_what_ships_with_it() -> None:
    """An allowlist, which a forbidden contract cannot say: the trainer's side of `shared` is torch-free and DB-free."""
    graph = grimp.build_graph("services", "shared", include_external_packages=True)
    allowed = ("shared.schemas", "shared.errors", "shared.rules")
    offending = set()
    for module in graph.find_descendants("services.gpu") | {"services.gpu"}:
        for imported in graph.find_modules_directly_imported_by(module):
            top = imported.split(".")[0]
            inside = imported.startswith("services.gpu") if top == "services" else imported.startswith(allowed)
            if top in ("services", "shared") and not inside:
                offending.add(f"{module} -> {imported}")
    assert not offending, sorted(offending)


def test_api_never_imports_ml_libraries() -> None:
    """At run time too: what `create_app` really loads (catches an import hidden from static analysis)."""
    loaded = _loaded_after("from services.api.app import create_app")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_gpu_entry_points_load_no_sqlalchemy() -> None:
    loaded = _loaded_after("import services.gpu.trainer, services.gpu.serving.server")
    assert "sqlalchemy" not in loaded
