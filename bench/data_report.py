"""The data quality report on 1,000 generated examples: cold, then again after
adding 50 examples (only those are embedded), in one process.

    .venv/bin/python bench/data_report.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.gpu import quality  # noqa: E402
from tests.data.generated import generated_set  # noqa: E402

MODELS = Path(os.environ.get("FASTBRAIN_MODEL_CACHE_DIR", ROOT / ".cache" / "test-models"))


def timed(conversations: list[dict[str, str]]) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    report = quality.build_report(
        models_dir=MODELS,
        base_model="tiny-random",
        system_prompt="You help.",
        conversations=conversations,
        max_seq_length=512,
    )
    return time.perf_counter() - started, report


def main() -> None:
    quality._load_embedder()  # model loading is a one-off per worker; not part of a report
    examples, _ = generated_set(1050)
    cold, report = timed(examples[:1000])
    warm, _ = timed(examples)
    print(f"1,000 examples, cold (baseline): {cold:6.1f} s  ({report['topics']['count']} topics)")  # type: ignore[index]
    print(f"1,050 examples, after adding 50: {warm:6.1f} s")
    print(f"speed-up from the embedding cache: {cold / warm:.1f}x")


if __name__ == "__main__":
    main()
