"""CPU training throughput: Fast Brain's fp32 choice against TRL's defaults.

TRL's SFTConfig defaults to bf16 with gradient checkpointing. On a CPU without
bf16 instructions that is slow; Fast Brain trains in fp32 without
checkpointing there. This runs the real trainer (services.gpu.trainer.train)
on smollm2-135m-instruct both ways, same data and steps, and prints tokens/s
and the ratio.

    .venv/bin/python bench/precision.py [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.demo import demo_skill
from shared.schemas.training import Hyperparameters, TrainingSpec, Turn

MODELS = Path(os.environ.get("FASTBRAIN_MODEL_CACHE_DIR", Path(__file__).resolve().parents[1] / "data" / "models"))


def run(steps: int, bf16_checkpointing: bool) -> dict[str, Any]:
    from services.gpu import models
    from services.gpu.trainer import train

    if bf16_checkpointing:  # TRL's defaults: bf16 weights/autocast plus gradient checkpointing
        original = models.precision_for

        def trl_defaults(device: str, gradient_checkpointing: bool | None = None) -> models.Precision:
            p = original(device, True)
            return models.Precision(device=p.device, dtype_name="bfloat16", gradient_checkpointing=True)

        models.precision_for = trl_defaults
    skill = demo_skill()
    with tempfile.TemporaryDirectory() as out:
        spec = TrainingSpec(
            job_id="bench",
            skill_id=skill["skill_id"],
            base_model="smollm2-135m-instruct",
            system_prompt=skill["system_prompt"],
            conversations=[Turn.model_validate(c) for c in skill["conversations"]],
            hyperparameters=Hyperparameters(batch_size=2, gradient_accumulation_steps=1, max_steps=steps),
            output_dir=out,
            models_dir=str(MODELS),
        )
        complete = [p for p in train(spec, device="cpu") if p["type"] == "complete"][-1]
    return {"tokens_per_second": complete["tokens_per_second"], "seconds": complete["training_time_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mode", choices=["fp32", "trl-defaults"])
    args = parser.parse_args()
    if args.mode:  # one measurement per process: the monkeypatch must not leak
        print(json.dumps(run(args.steps, args.mode == "trl-defaults")))
        return
    import subprocess

    results = {}
    for mode in ("trl-defaults", "fp32"):
        out = subprocess.run(
            [sys.executable, __file__, "--steps", str(args.steps), "--mode", mode],
            capture_output=True,
            text=True,
            check=True,
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{mode:13} {results[mode]['tokens_per_second']:8.1f} tokens/s  ({results[mode]['seconds']:.1f}s)")
    ratio = results["fp32"]["tokens_per_second"] / results["trl-defaults"]["tokens_per_second"]
    print(f"fp32 / TRL defaults (bf16 + checkpointing): {ratio:.1f}x")


if __name__ == "__main__":
    main()
