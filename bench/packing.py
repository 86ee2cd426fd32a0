"""Packing speed-up: tokens/s packed / unpacked, same examples and epochs, one after the other.

    .venv/bin/python bench/packing.py [--model smollm2-135m-instruct] [--epochs 2] [--max-seq-length 512]

Trains the demo skill (shared/demo/molasses-alchemist.json) with the Standard preset's
batch (2 x 4 accumulation) twice, each in a fresh trainer process (`python -m
services.gpu.trainer`, as the local backend runs it): `packing=True` then `packing=False`.
tokens/s is the trainer's own figure (real, non-padding tokens over the optimizer steps).
CPU unless FASTBRAIN_TRAIN_DEVICE says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.schemas.training import Hyperparameters, TrainingSpec, Turn  # noqa: E402


def run(model: str, packing: bool, epochs: int, max_seq_length: int, models_dir: Path, tmp: Path) -> dict[str, Any]:
    demo = json.loads((REPO / "shared" / "demo" / "molasses-alchemist.json").read_text())
    spec = TrainingSpec(
        job_id=f"bench-packing-{packing}",
        skill_id=demo["skill_id"],
        base_model=model,
        system_prompt=demo["system_prompt"],
        conversations=[Turn.model_validate(c) for c in demo["conversations"]],
        hyperparameters=Hyperparameters(epochs=epochs, max_seq_length=max_seq_length, packing=packing),
        output_dir=str(tmp / f"adapter-{packing}"),
        models_dir=str(models_dir),
    )
    path = tmp / f"spec-{packing}.json"
    path.write_text(spec.model_dump_json())
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "services.gpu.trainer", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "FASTBRAIN_TRAIN_DEVICE": os.environ.get("FASTBRAIN_TRAIN_DEVICE", "cpu")},
    )
    wall = time.perf_counter() - started
    payloads = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0:
        raise SystemExit(f"trainer failed (packing={packing}): {payloads[-1] if payloads else proc.stderr[-2000:]}")
    progress = [p for p in payloads if p["type"] == "progress"]
    complete = payloads[-1]
    logs = [p["message"] for p in payloads if p["type"] == "log"]
    return {
        "packing": packing,
        "steps": complete["steps"],
        "tokens": progress[-1]["tokens_seen"],
        "step_seconds": progress[-1]["elapsed_seconds"],
        "tokens_per_second": complete["tokens_per_second"],
        "initial_loss": complete["initial_loss"],
        "final_loss": complete["final_loss"],
        "wall_seconds": round(wall, 1),
        "packing_log": next((m for m in logs if m.startswith("Packing")), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--models-dir", default=os.environ.get("FASTBRAIN_TEST_MODELS_DIR") or ".cache/test-models")
    args = parser.parse_args()
    models_dir = (REPO / args.models_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp:
        results = [
            run(args.model, packing, args.epochs, args.max_seq_length, models_dir, Path(tmp))
            for packing in (True, False)
        ]
    packed, unpacked = results
    print(f"model {args.model}, {args.epochs} epoch(s), max_seq_length {args.max_seq_length}, batch 2 x 4")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}")
    if packed["packing_log"]:
        print(packed["packing_log"])
    print("| run | steps | real tokens | step time | tokens/s | loss first → last |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {'packed' if r['packing'] else 'unpacked'} | {r['steps']} | {r['tokens']} | {r['step_seconds']:.1f} s "
            f"| {r['tokens_per_second']:.1f} | {r['initial_loss']:.2f} → {r['final_loss']:.2f} |"
        )
    print(f"speed-up (tokens/s packed / unpacked): {packed['tokens_per_second'] / unpacked['tokens_per_second']:.2f}x")


if __name__ == "__main__":
    main()
