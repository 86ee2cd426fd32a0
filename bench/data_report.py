"""The data quality report on 1,000 generated examples: cold, then again after
adding 50 examples (only those are embedded), in one process.

    .venv/bin/python bench/data_report.py
    .venv/bin/python bench/data_report.py memory   # peak memory of the similarity step

`memory`: the near-duplicate search on n random unit vectors of MiniLM's dimension (384;
embedding 50,000 texts takes ~10 minutes on 2 cores, and the search's memory does not
depend on what the vectors say), each measurement in a fresh process (tracemalloc, which
numpy reports its arrays to, plus ru_maxrss). The baseline is the old n x n matrix
(`embeddings @ embeddings.T`, then `np.triu`), measured where it fits in memory.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
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


DIM = 384


def old_similar_pairs(embeddings: object, threshold: float) -> list[tuple[int, int, float]]:
    """The baseline: the whole n x n matrix, then its upper triangle (the code before blockwise search)."""
    import numpy as np

    e = np.asarray(embeddings)
    sims = e @ e.T
    rows, cols = np.where(np.triu(sims, k=1) >= threshold)
    return [(a, b, float(sims[a, b])) for a, b in zip(rows.tolist(), cols.tolist(), strict=True)]


def measure(kind: str, n: int) -> dict[str, float]:
    """In this (fresh) process: peak memory of one similarity search on n unit vectors."""
    import numpy as np

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[1::1000] = vectors[::1000][: len(vectors[1::1000])]  # some exact near duplicates to find
    search = old_similar_pairs if kind == "old" else quality.similar_pairs
    tracemalloc.start()
    started = time.perf_counter()
    pairs = search(vectors, quality.NEAR_DUPLICATE_SIMILARITY)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "n": n,
        "pairs": len(pairs),
        "peak_mb": peak / 1e6,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
        "inputs_mb": vectors.nbytes / 1e6,
        "seconds": elapsed,
    }


def in_fresh_process(kind: str, n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "measure", kind, str(n)], check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(out.splitlines()[-1]))


def memory() -> None:
    print(f"similarity step on random unit vectors, d={DIM}, float32; block={quality.SIMILARITY_BLOCK} rows")
    rows = [("old", 5_000), ("new", 5_000), ("old", 20_000), ("new", 20_000), ("new", 50_000)]
    results = {(kind, n): in_fresh_process(kind, n) for kind, n in rows}
    for (kind, n), r in results.items():
        print(
            f"{kind:>3} n={n:>6,}: peak {r['peak_mb']:8.1f} MB traced, maxrss {r['maxrss_mb']:8.1f} MB, "
            f"{r['seconds']:6.1f} s, {int(r['pairs'])} pairs (inputs {r['inputs_mb']:.1f} MB)"
        )
    for n in (5_000, 20_000):
        old, new = results[("old", n)], results[("new", n)]
        assert old["pairs"] == new["pairs"]
        print(f"n={n:,}: old/new traced peak {old['peak_mb'] / new['peak_mb']:.1f}x")
    projected = 2 * 50_000**2 * 4 / 1e6  # the n x n float32 matrix and np.triu's copy
    new = results[("new", 50_000)]
    print(
        f"n=50,000: old would need >= {projected:,.0f} MB (n x n float32, twice); new {new['peak_mb']:.1f} MB: "
        f"{projected / new['peak_mb']:.0f}x"
    )


def main() -> None:
    if sys.argv[1:2] == ["memory"]:
        memory()
        return
    if sys.argv[1:2] == ["measure"]:
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]))))
        return
    quality._load_embedder()  # model loading is a one-off per worker; not part of a report
    examples, _ = generated_set(1050)
    cold, report = timed(examples[:1000])
    warm, _ = timed(examples)
    print(f"1,000 examples, cold (baseline): {cold:6.1f} s  ({report['topics']['count']} topics)")  # type: ignore[index]
    print(f"1,050 examples, after adding 50: {warm:6.1f} s")
    print(f"speed-up from the embedding cache: {cold / warm:.1f}x")


if __name__ == "__main__":
    main()
