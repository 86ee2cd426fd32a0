"""Which defaults teach a small skill something? Held-out loss before/after for a few configs.

    .venv/bin/python bench/presets.py [--examples 12] [--configs spec-default,ep8-lr4e-4] [--out bench/presets.json]

Trains `smollm2-135m-instruct` on the first N examples of the demo skill
(shared/demo/molasses-alchemist.json) with the trainer's own evaluation split (20%
held out by seed 42: 12 examples -> 9 trained, 3 held out) and prints one markdown row
per config: held-out loss of the base model, after training, the reduction, steps and
wall time. CPU by default (FASTBRAIN_TRAIN_DEVICE=cpu); the results in docs/presets.md
come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.gpu.trainer import train  # noqa: E402
from shared.schemas.training import Hyperparameters, TrainingSpec, Turn  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    # The spec's defaults (the Standard preset for 100+ examples).
    "spec-default": {},
    "ep8-lr4e-4": {"epochs": 8, "learning_rate": 4e-4},
    "ep5-lr4e-4-ga2": {"epochs": 5, "learning_rate": 4e-4, "gradient_accumulation_steps": 2},
    "ep8-lr4e-4-ga2": {"epochs": 8, "learning_rate": 4e-4, "gradient_accumulation_steps": 2},
    "ep12-lr3e-4-r32": {"epochs": 12, "learning_rate": 3e-4, "lora_r": 32, "lora_alpha": 32},
}


def run(name: str, overrides: dict[str, Any], examples: int, models_dir: Path) -> dict[str, Any]:
    demo = json.loads((REPO / "shared" / "demo" / "molasses-alchemist.json").read_text())
    hp = Hyperparameters(**overrides)
    with tempfile.TemporaryDirectory() as tmp:
        spec = TrainingSpec(
            job_id=f"bench-{name}",
            skill_id=demo["skill_id"],
            base_model="smollm2-135m-instruct",
            system_prompt=demo["system_prompt"],
            conversations=[Turn.model_validate(c) for c in demo["conversations"][:examples]],
            hyperparameters=hp,
            output_dir=str(Path(tmp) / "adapter"),
            models_dir=str(models_dir),
        )
        started = time.perf_counter()
        complete: dict[str, Any] = {}
        evals: list[tuple[int, float]] = []
        for payload in train(spec):
            if payload["type"] == "progress" and payload.get("eval_loss") is not None:
                evals.append((payload["step"], payload["eval_loss"]))
            if payload["type"] == "complete":
                complete = payload
        wall = time.perf_counter() - started
    return {
        "name": name,
        "config": {
            k: v
            for k, v in hp.model_dump().items()
            if k in overrides or k in ("lora_r", "learning_rate", "epochs", "batch_size", "gradient_accumulation_steps")
        },
        "steps": complete.get("steps"),
        "eval_examples": complete.get("eval_examples"),
        "eval_loss_before": complete.get("eval_loss_before"),
        "eval_loss_during": evals,
        "eval_loss_after": complete.get("eval_loss_after"),
        "improvement_pct": complete.get("improvement_pct"),
        "train_loss_first_last": [complete.get("initial_loss"), complete.get("final_loss")],
        "training_time_seconds": complete.get("training_time_seconds"),
        "wall_seconds": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=12)
    parser.add_argument("--configs", default="spec-default,ep8-lr4e-4,ep5-lr4e-4-ga2")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("FASTBRAIN_TEST_MODELS_DIR", REPO / ".cache" / "test-models")),
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("FASTBRAIN_TRAIN_DEVICE", "cpu")
    results = []
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}", flush=True)
    print("| config | steps | held-out before | after | reduction | wall s |", flush=True)
    print("|---|---|---|---|---|---|", flush=True)
    for name in args.configs.split(","):
        result = run(name, CONFIGS[name], args.examples, args.models_dir)
        results.append(result)
        print(
            f"| {name} {json.dumps(result['config'])} | {result['steps']} | {result['eval_loss_before']} | "
            f"{result['eval_loss_after']} | {result['improvement_pct']}% | {result['wall_seconds']} |",
            flush=True,
        )
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
