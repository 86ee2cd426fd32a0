"""Worker threads may be the first to touch transformers, two at a time.

A data report and a test chat (or two reports) run in threads of one worker
process. transformers' lazy first import is not thread-safe; before
services/gpu/imports.py one of two concurrent first reports failed with
`ImportError: cannot import name 'AutoTokenizer'` (3 of 3 tries on this machine).
This runs two reports at once in a fresh interpreter, as a new worker would.
"""

from __future__ import annotations

import json
import subprocess
import sys

from shared.settings import Settings
from tests.conftest import REPO_ROOT

SCRIPT = """
import json, sys, threading
from services.gpu.quality import build_report

conversations = [{"user": f"Question {i} about honey?", "assistant": f"Answer {i}: it is sweet."} for i in range(12)]
errors, reports = [], []

def report():
    try:
        reports.append(build_report(models_dir=sys.argv[1], base_model="tiny-random", system_prompt="Be brief.",
                                    conversations=conversations, max_seq_length=512))
    except Exception as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=report) for _ in range(2)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"errors": errors, "counts": [r["example_count"] for r in reports]}))
"""


def test_two_first_reports_at_once_in_a_fresh_process(settings: Settings) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(settings.models_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"errors": [], "counts": [12, 12]}
