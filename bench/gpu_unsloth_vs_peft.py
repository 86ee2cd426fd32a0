"""Unsloth vs plain PEFT on one CUDA GPU: the same trainer, the same data, a 1B-class random Llama.

Nothing is downloaded: the model is a random-weight Llama (1B-class config) built here with the
SmolLM2 tokenizer, saved as the `tiny-random` catalog entry of a private models dir, so
`services.gpu.trainer.train` runs it unchanged on both paths (FASTBRAIN_UNSLOTH=1 / 0).

    .venv/bin/python bench/gpu_unsloth_vs_peft.py [--steps 30] [--seq 512] [--batch 4]

Prints tokens/s, peak GPU memory and step time per path, and the Unsloth ÷ PEFT ratio.
Needs CUDA; the Unsloth row needs `pip install unsloth` (the `gpu` extra).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# 1B-class Llama (about 1.1B parameters with the 49K SmolLM2 vocabulary).
LLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 4096,
}


def build_random_llama(models_dir: Path, tokenizer_cache: Path, model_id: str = "tiny-random") -> Path:
    """A random-weight 1B-class Llama with the SmolLM2 tokenizer at `models_dir/model_id` (bf16 on disk)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from services.gpu.models import SMOLLM2_SPECIAL_TOKENS, load_smollm2_tokenizer

    target = models_dir / model_id
    if (target / "config.json").is_file():
        return target
    tokenizer = load_smollm2_tokenizer(tokenizer_cache)
    eos: Any = tokenizer.convert_tokens_to_ids(SMOLLM2_SPECIAL_TOKENS["eos_token"])
    bos: Any = tokenizer.convert_tokens_to_ids(SMOLLM2_SPECIAL_TOKENS["bos_token"])
    shape: dict[str, Any] = dict(LLAMA_1B)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        **shape,
    )
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model = model.to(torch.bfloat16)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def train_once(models_dir: Path, path: str, steps: int, seq: int, batch: int, out: Path) -> dict[str, Any]:
    """One training on `path` ("unsloth" or "peft"); the trainer's own throughput and peak memory."""
    import torch

    from services.gpu import trainer
    from shared.schemas.training import Hyperparameters, TrainingSpec, Turn

    os.environ[trainer.UNSLOTH_ENV] = "1" if path == "unsloth" else "0"
    torch.cuda.reset_peak_memory_stats()
    # About seq/2 tokens ("hello" is one token): the whole answer fits, as the template check requires.
    long_answer = " ".join(["hello"] * (seq // 2))
    spec = TrainingSpec(
        job_id=f"bench-{path}",
        skill_id="bench",
        base_model="tiny-random",
        system_prompt="You answer at length.",
        conversations=[Turn(user=f"Question {i}?", assistant=long_answer) for i in range(batch * steps)],
        hyperparameters=Hyperparameters(
            max_steps=steps, batch_size=batch, gradient_accumulation_steps=1, max_seq_length=seq, warmup_ratio=0.0
        ),
        output_dir=str(out / path),
        models_dir=str(models_dir),
    )
    events = list(trainer.train(spec, device="cuda"))
    complete = events[-1]
    assert complete["type"] == "complete", events[-3:]
    assert complete["training_path"] == path, complete
    progress = [e for e in events if e["type"] == "progress"]
    return {
        "path": path,
        "tokens_per_second": complete["tokens_per_second"],
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 3),
        "seconds_per_step": round(progress[-1]["elapsed_seconds"] / max(len(progress), 1), 3),
        "final_loss": complete["final_loss"],
        "adapter_dir": str(out / path),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--models-dir", type=Path, default=REPO / ".cache" / "bench-models")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="fastbrain-bench-"))
    models_dir = work / "models"
    build_random_llama(models_dir, args.models_dir)
    paths = ["peft"] + (["unsloth"] if importlib.util.find_spec("unsloth") else [])
    rows = [train_once(models_dir, p, args.steps, args.seq, args.batch, work / "out") for p in paths]
    print(f"GPU: {torch.cuda.get_device_name(0)}; 1B-class random Llama; seq {args.seq}, batch {args.batch}")
    for row in rows:
        print(json.dumps(row))
    if len(rows) == 2:
        peft, unsloth = rows
        print(
            f"unsloth/peft: tokens/s x{unsloth['tokens_per_second'] / peft['tokens_per_second']:.2f}, "
            f"peak memory x{unsloth['peak_memory_gb'] / peft['peak_memory_gb']:.2f}"
        )
    else:
        print("unsloth not installed: PEFT row only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
