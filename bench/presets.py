"""Which defaults teach a small skill something? Held-out loss before/after per skill and config.

    .venv/bin/python bench/presets.py [--skills a.json,b.json] [--examples N] \
        [--configs default,ep8-lr4e-4] [--threads N] [--out bench/presets.json]

Trains `smollm2-135m-instruct` on each skill (default: the demo skill and the skills in
bench/skills/) with the trainer's own evaluation split (20% held out by seed 42, at least 2)
and prints one markdown row per skill and config: held-out loss of the base model, after
training (the kept best weights), the reduction, the step kept, steps and wall time.
`default` is what a user gets who presses Train: the Standard preset resolved for the
skill's size, exactly as the API does. Other configs lay their values over the spec's
(100+ examples) defaults. CPU by default (FASTBRAIN_TRAIN_DEVICE=cpu); `--threads 1` lets two
runs share the 2-core machine for exploration (wall times then are not the product's).
The results in docs/presets.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import describe  # noqa: E402
from services.gpu.trainer import train  # noqa: E402
from shared.schemas.training import Hyperparameters, TrainingConfigRequest, TrainingSpec, Turn  # noqa: E402

DEFAULT_SKILLS = [
    REPO / "shared" / "demo" / "molasses-alchemist.json",
    *sorted((REPO / "bench" / "skills").glob("*.json")),
]

SMALL_STANDARD: dict[str, Any] = TrainingConfigRequest().resolve(10).model_dump()  # a skill under 100 examples

# Values laid over the spec's defaults (r 16, alpha 16, lr 2e-4, 3 epochs, batch 2 x accumulation 4).
CONFIGS: dict[str, dict[str, Any]] = {
    "spec-default": {},
    "ep8-lr4e-4": {"epochs": 8, "learning_rate": 4e-4},
    "ep8-lr4e-4-ga2": {"epochs": 8, "learning_rate": 4e-4, "gradient_accumulation_steps": 2},
    "ep8-lr1e-3-ga2": {"epochs": 8, "learning_rate": 1e-3, "gradient_accumulation_steps": 2},
    "ep8-lr1e-3-ga1": {"epochs": 8, "learning_rate": 1e-3, "gradient_accumulation_steps": 1},
    "ep8-lr2e-3-ga2": {"epochs": 8, "learning_rate": 2e-3, "gradient_accumulation_steps": 2},
    "ep12-lr1e-3-ga2": {"epochs": 12, "learning_rate": 1e-3, "gradient_accumulation_steps": 2},
    "ep8-lr1e-3-ga2-a32": {"epochs": 8, "learning_rate": 1e-3, "gradient_accumulation_steps": 2, "lora_alpha": 32},
    "ep8-lr1e-3-ga2-neft5": {
        "epochs": 8,
        "learning_rate": 1e-3,
        "gradient_accumulation_steps": 2,
        "neftune_noise_alpha": 5.0,
    },
    "ep8-lr1e-3-ga2-drop10": {
        "epochs": 8,
        "learning_rate": 1e-3,
        "gradient_accumulation_steps": 2,
        "lora_dropout": 0.1,
    },
    "ep8-lr6e-4-ga2-es3": {
        "epochs": 8,
        "learning_rate": 6e-4,
        "gradient_accumulation_steps": 2,
        "early_stopping_patience": 3,
    },
    "ep8-lr1e-3-ga2-neft5-es3": {
        "epochs": 8,
        "learning_rate": 1e-3,
        "gradient_accumulation_steps": 2,
        "neftune_noise_alpha": 5.0,
        "early_stopping_patience": 3,
    },
    "ep4-lr1e-3-ga2-es3": {
        "epochs": 4,
        "learning_rate": 1e-3,
        "gradient_accumulation_steps": 2,
        "early_stopping_patience": 3,
    },
    "ep3-lr2e-3-ga2-es3": {
        "epochs": 3,
        "learning_rate": 2e-3,
        "gradient_accumulation_steps": 2,
        "early_stopping_patience": 3,
    },
    "ep8-lr2e-3-ga2-es3": {
        "epochs": 8,
        "learning_rate": 2e-3,
        "gradient_accumulation_steps": 2,
        "early_stopping_patience": 3,
    },
    "ep12-lr3e-4-r32": {"epochs": 12, "learning_rate": 3e-4, "lora_r": 32, "lora_alpha": 32},
    # The small-skill Standard preset with one change each.
    "default-a32": {**SMALL_STANDARD, "lora_alpha": 32},
    "default-drop10": {**SMALL_STANDARD, "lora_dropout": 0.1},
    "default-r64a64": {**SMALL_STANDARD, "lora_r": 64, "lora_alpha": 64},
}


BENCHED = (
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "learning_rate",
    "epochs",
    "batch_size",
    "gradient_accumulation_steps",
    "neftune_noise_alpha",
    "early_stopping_patience",
)


def hyperparameters(config: str, example_count: int) -> Hyperparameters:
    if config == "default":  # what pressing Train gives: the Standard preset for this many examples
        return TrainingConfigRequest().resolve(example_count)
    return Hyperparameters(**CONFIGS[config])


def run(skill_path: Path, config: str, examples: int | None, models_dir: Path) -> dict[str, Any]:
    skill = json.loads(skill_path.read_text())
    conversations = [Turn.model_validate(c) for c in skill["conversations"][:examples]]
    hp = hyperparameters(config, len(conversations))
    with tempfile.TemporaryDirectory() as tmp:
        spec = TrainingSpec(
            job_id=f"bench-{skill['skill_id']}-{config}",
            skill_id=skill["skill_id"],
            base_model="smollm2-135m-instruct",
            system_prompt=skill["system_prompt"],
            conversations=conversations,
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
            if payload["type"] == "error" and payload.get("final", True):
                raise RuntimeError(f"{skill_path.name} {config}: {payload.get('message')}")
            if payload["type"] == "complete":
                complete = payload
        wall = time.perf_counter() - started
    evaluation = complete.get("evaluation") or {}
    return {
        "skill": skill["skill_id"],
        "examples": len(conversations),
        "config": config,
        "hyperparameters": {k: v for k, v in hp.model_dump().items() if k in BENCHED},
        "steps": complete.get("steps"),
        "eval_examples": complete.get("eval_examples"),
        "eval_loss_before": complete.get("eval_loss_before"),
        "eval_loss_during": evals,
        "eval_loss_after": complete.get("eval_loss_after"),
        "improvement_pct": complete.get("improvement_pct"),
        "best_step": complete.get("best_step"),
        "train_loss_first_last": [complete.get("initial_loss"), complete.get("final_loss")],
        "training_time_seconds": complete.get("training_time_seconds"),
        "wall_seconds": round(wall, 1),
        "samples": evaluation.get("samples", []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--skills", default=",".join(str(p) for p in DEFAULT_SKILLS), help="comma-separated skill files"
    )
    parser.add_argument("--examples", type=int, default=None, help="use only each skill's first N examples")
    parser.add_argument("--configs", default="default")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("FASTBRAIN_TEST_MODELS_DIR", REPO / ".cache" / "test-models")),
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("FASTBRAIN_TRAIN_DEVICE", "cpu")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = []
    print(f"machine: {describe()}", flush=True)
    print("| skill | examples (held out) | config | steps | held-out before | after | reduction | kept step | wall s |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for skill_path in [Path(p) for p in args.skills.split(",")]:
        for config in args.configs.split(","):
            r = run(skill_path, config, args.examples, args.models_dir)
            results.append(r)
            print(
                f"| {r['skill']} | {r['examples']} ({r['eval_examples']}) "
                f"| {config} {json.dumps(r['hyperparameters'])} "
                f"| {r['steps']} | {r['eval_loss_before']} | {r['eval_loss_after']} | {r['improvement_pct']}% "
                f"| {r['best_step']} | {r['wall_seconds']} |",
                flush=True,
            )
            if args.out:
                args.out.write_text(json.dumps(results, indent=2) + "\n")
    reductions = [r["improvement_pct"] for r in results if r["improvement_pct"] is not None]
    for config in args.configs.split(","):
        mine = [r["improvement_pct"] for r in results if r["config"] == config and r["improvement_pct"] is not None]
        if mine:
            print(f"{config}: median held-out reduction {statistics.median(mine):.1f}% over {len(mine)} skills")
    if not reductions:
        print("no held-out measurement (skills under 10 examples have no split)")


if __name__ == "__main__":
    main()
