"""Packing on CUDA: isolation of packed examples, and the speed-up, on one GPU.

    python bench/gpu_packing.py [--repeat 10] [--models-dir .cache/bench-models]

1. Isolation. The demo skill's examples, rendered as the trainer renders them, go through the
   1B-class random Llama (bf16 weights, sdpa attention) once one per row and once packed several
   to a row (packing.pack_examples + PackedCollator + model_inputs, as the trainer feeds them).
   Printed: the largest logit difference over every example's tokens, in fp32 and in bf16, and the
   same for the negative control (packed rows as one plain causal sequence), which must be large.
2. Speed. The PEFT path trains the demo skill (its examples x --repeat, one epoch, batch 4, no
   accumulation) packed and then unpacked: the trainer's own tokens/s (real tokens only) and the
   ratio packed / unpacked, measured in the same run. Then the same model, LoRA, precision and
   batches in a bare loop (forward, backward, AdamW; no Trainer), so the Trainer's own cost per
   step shows as the ratio trainer / bare.

Needs CUDA, and the model built by bench/gpu_unsloth_vs_peft.py's build_random_llama (done here).
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

DEVICE = "cuda"
DEMO = json.loads((REPO / "shared" / "demo" / "molasses-alchemist.json").read_text())


def _gpu_bench() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "bench" / "gpu_unsloth_vs_peft.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def isolation(models_dir: Path, dtype_name: str) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM

    from services.gpu import data, packing
    from services.gpu.models import load_tokenizer

    dtype = getattr(torch, dtype_name)
    tokenizer = load_tokenizer("tiny-random", models_dir)
    examples, _ = data.prepare_examples(tokenizer, DEMO["system_prompt"], DEMO["conversations"], 512)
    model = AutoModelForCausalLM.from_pretrained(
        models_dir / "tiny-random", dtype=dtype, attn_implementation="sdpa"
    ).to(DEVICE)
    model.eval()
    with torch.no_grad():
        alone = [
            model(input_ids=torch.tensor([e["input_ids"]], device=DEVICE), use_cache=False).logits[0] for e in examples
        ]
        rows = packing.pack_examples(examples, max_length=512)
        batch = packing.PackedCollator(pad_token_id=0)(rows)
        inputs = {k: v.to(DEVICE) for k, v in packing.model_inputs(batch).items()}
        packed = model(**inputs, use_cache=False).logits
        leaky_inputs = {
            "input_ids": inputs["input_ids"],
            "attention_mask": batch["attention_mask"].to(DEVICE),
            "position_ids": torch.arange(inputs["input_ids"].shape[1], device=DEVICE).expand_as(inputs["input_ids"]),
        }
        leaky = model(**leaky_inputs, use_cache=False).logits
    index = {tuple(e["input_ids"]): i for i, e in enumerate(examples)}
    worst, worst_leaky = 0.0, 0.0
    for r, row in enumerate(rows):
        start = 0
        for length in row["seq_lengths"]:
            i = index[tuple(row["input_ids"][start : start + length])]
            worst = max(worst, (packed[r, start : start + length] - alone[i]).abs().max().item())
            worst_leaky = max(worst_leaky, (leaky[r, start : start + length] - alone[i]).abs().max().item())
            start += length
    return {
        "dtype": dtype_name,
        "examples": len(examples),
        "rows": len(rows),
        "max_logit_diff": worst,
        "negative_control_max_logit_diff": worst_leaky,
    }


def raw_loop(models_dir: Path, packed: bool, repeat: int, fused_head: bool = False) -> dict[str, Any]:
    """The same model, LoRA, precision and batches in a bare loop (no Trainer): the step's own cost.

    `fused_head`: the loss through TRL's fused LM head (`add_fused_lm_head`, log-probs, entropy and
    top-1 in chunks without the full logits), as SFTTrainer computes it, instead of the model's own.
    """
    import time

    import torch
    from peft import LoraConfig, get_peft_model

    from services.gpu import data, packing
    from services.gpu.models import load_for_training
    from services.gpu.trainer import LORA_TARGET_MODULES

    model, tokenizer, precision = load_for_training("tiny-random", models_dir, DEVICE)
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGET_MODULES, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if fused_head:
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    examples, _ = data.prepare_examples(tokenizer, DEMO["system_prompt"], DEMO["conversations"] * repeat, 512)
    rows = (
        packing.pack_examples(examples, max_length=512)
        if packed
        else [{**e, "seq_lengths": [len(e["input_ids"])]} for e in examples]
    )
    collate = packing.PackedCollator(pad_token_id=0)
    batches = [collate(rows[i : i + 4]) for i in range(0, len(rows) - 3, 4)]
    model.train()

    def step(batch: dict[str, Any]) -> int:
        inputs = {k: v.to(DEVICE) for k, v in packing.model_inputs(batch).items()}
        dtype = getattr(torch, precision.dtype_name)
        with torch.autocast(DEVICE.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            if fused_head:
                out = model(**inputs, use_cache=False, fused_lm_head=True)
                loss = -out.log_probs.sum() / out.label_mask.sum().clamp(min=1)
            else:
                loss = model(**inputs, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())

    def sync() -> None:
        if DEVICE.startswith("cuda"):
            torch.cuda.synchronize()

    # Two passes over the same 15 batches: the first meets each batch shape for the first time
    # (a kernel that tunes itself per shape pays then), the second has seen them all.
    batches = batches[:15]
    step(batches[0])  # warm-up
    sync()
    passes: list[tuple[float, int]] = []
    for _ in range(2):
        started, tokens = time.perf_counter(), 0
        for batch in batches:
            tokens += step(batch)
        sync()
        passes.append((time.perf_counter() - started, tokens))
    (first, tokens_1), (second, tokens_2) = passes
    return {
        "loop": "bare, TRL fused head" if fused_head else "bare",
        "packing": packed,
        "steps_per_pass": len(batches),
        "first_pass_seconds_per_step": round(first / len(batches), 4),
        "second_pass_seconds_per_step": round(second / len(batches), 4),
        "tokens_per_second": round(tokens_2 / second, 1),
        "first_pass_tokens_per_second": round(tokens_1 / first, 1),
    }


def train(
    models_dir: Path, packed: bool, repeat: int, out: Path, pad_multiple: int | str | None = "default"
) -> dict[str, Any]:
    """One trainer run; `pad_multiple` overrides the trainer's CUDA_PAD_MULTIPLE for this run."""
    from services.gpu import trainer
    from services.gpu.training import pipeline
    from shared.schemas.training import Hyperparameters, TrainingSpec, Turn

    os.environ[trainer.UNSLOTH_ENV] = "0"
    default = pipeline.CUDA_PAD_MULTIPLE
    if pad_multiple != "default":
        pipeline.CUDA_PAD_MULTIPLE = pad_multiple  # type: ignore[assignment]
    spec = TrainingSpec(
        job_id=f"bench-gpu-packing-{packed}",
        skill_id=DEMO["skill_id"],
        base_model="tiny-random",
        system_prompt=DEMO["system_prompt"],
        conversations=[Turn.model_validate(c) for c in DEMO["conversations"] * repeat],
        hyperparameters=Hyperparameters(
            epochs=1, batch_size=4, gradient_accumulation_steps=1, max_seq_length=512, warmup_ratio=0.0, packing=packed
        ),
        output_dir=str(out / f"packed-{packed}"),
        models_dir=str(models_dir),
    )
    try:
        events = list(trainer.train(spec, device=DEVICE))
    finally:
        pipeline.CUDA_PAD_MULTIPLE = default
    complete = events[-1]
    assert complete["type"] == "complete", events[-3:]
    steps = [e for e in events if e["type"] == "progress"]
    return {
        "packing": packed,
        "pad_to_multiple_of": pipeline.CUDA_PAD_MULTIPLE if pad_multiple == "default" else pad_multiple,
        "steps": steps[-1]["step"],
        "tokens_per_second": complete["tokens_per_second"],
        "final_loss": complete["final_loss"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--models-dir", type=Path, default=REPO / ".cache" / "bench-models")
    parser.add_argument("--bare-only", action="store_true", help="only the bare loops, plain and fused head")
    parser.add_argument(
        "--padding-only", action="store_true", help="only the trainer, padded to a multiple of 64 tokens and not"
    )
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="fastbrain-gpu-packing-"))
    models_dir = work / "models"
    _gpu_bench().build_random_llama(models_dir, args.models_dir)
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; 1B-class random Llama, sdpa")
    if args.bare_only:
        for packed in (True, False):
            plain, fused = (raw_loop(models_dir, packed, args.repeat, fused_head=f) for f in (False, True))
            print(json.dumps(plain))
            print(json.dumps(fused))
            ratio = fused["tokens_per_second"] / plain["tokens_per_second"]
            print(f"packing={packed}: fused head / model's own loss, tokens/s (second pass): x{ratio:.2f}")
        return 0
    if args.padding_only:
        for packed in (True, False):
            exact = train(models_dir, packed, args.repeat, work / "out", pad_multiple=None)
            padded = train(models_dir, packed, args.repeat, work / "out", pad_multiple=64)
            print(json.dumps(exact))
            print(json.dumps(padded))
            ratio = padded["tokens_per_second"] / exact["tokens_per_second"]
            print(f"packing={packed}: trainer tokens/s padded to 64 / exact lengths: x{ratio:.2f}")
        return 0
    for dtype in ("float32", "bfloat16"):
        print(json.dumps(isolation(models_dir, dtype)))
    rows = [train(models_dir, packed, args.repeat, work / "out") for packed in (True, False)]
    for row in rows:
        print(json.dumps(row))
    print(f"trainer, packed/unpacked tokens/s: x{rows[0]['tokens_per_second'] / rows[1]['tokens_per_second']:.2f}")
    bare = [raw_loop(models_dir, packed, args.repeat) for packed in (True, False)]
    for row in bare:
        print(json.dumps(row))
    print(f"bare loop, packed/unpacked tokens/s: x{bare[0]['tokens_per_second'] / bare[1]['tokens_per_second']:.2f}")
    for trained, loop in zip(rows, bare, strict=True):
        ratio = trained["tokens_per_second"] / loop["tokens_per_second"]
        print(f"trainer/bare tokens/s (packing={loop['packing']}): x{ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
