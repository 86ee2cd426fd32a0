"""Exports benchmark: time per format, file sizes, and llama.cpp q8_0 decode speed against the PyTorch adapter's.

    .venv/bin/python bench/exports.py --adapter data/adapters/<skill>/v1 [--system "..."] [--prompt "..."]

Each format runs as the worker runs it (`python -m services.gpu.exports spec.json`, a child process),
timed from start to its result line, verification included. Decode speed: the same rendered prompt,
greedy, `--tokens` new tokens (end-of-turn ignored so both decode the same count), once in llama.cpp
(llama-cpp-python, the q8_0 file, all cores) and once in PyTorch (base fp32 + the unmerged PEFT
adapter, what the inference engine serves), in the same run, after one warm-up each.
Prints a Markdown table for docs/benchmarks.md and writes the numbers to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402


def run_export(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    path = work / f"spec-{spec['format']}.json"
    path.write_text(json.dumps(spec))
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "services.gpu.exports", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    if last["type"] != "result":
        raise SystemExit(f"{spec['format']} export failed: {last.get('message')}")
    return {"seconds": round(seconds, 1), "files": last["files"], "verification": last["verification"]}


def llama_decode(path: Path, prompt: str, tokens: int) -> float:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=os.cpu_count() or 1, verbose=False, seed=0)
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)

    def once() -> float:
        started = time.perf_counter()
        stream = llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True)
        for count, _ in enumerate(stream, start=1):
            if count == 1:
                started = time.perf_counter()  # decode only: the first token also pays for the prompt
            if count > tokens:
                break
        return tokens / (time.perf_counter() - started)

    once()
    return once()


def torch_decode(base_model: str, models_dir: str, adapter: str, prompt: str, tokens: int) -> float:
    import torch
    from peft import PeftModel

    from services.gpu.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(base_model, models_dir)
    model: Any = PeftModel.from_pretrained(load_model(base_model, models_dir, "cpu", dtype=torch.float32), adapter)
    model.eval()
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids

    def once() -> float:
        with torch.no_grad():
            first = time.perf_counter()
            model.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            prefill = time.perf_counter() - first
            started = time.perf_counter()
            model.generate(
                ids,
                max_new_tokens=tokens + 1,
                min_new_tokens=tokens + 1,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            return tokens / (time.perf_counter() - started - prefill)

    once()
    return once()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="an adapter folder (adapters/<skill>/v<n>)")
    parser.add_argument("--models-dir", default=str(ROOT / "data" / "models"))
    parser.add_argument("--system", default="You are a molasses expert.")
    parser.add_argument("--prompt", default="What is blackstrap molasses?")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "bench" / "exports.json"))
    args = parser.parse_args()
    adapter = Path(args.adapter).resolve()
    metadata = json.loads((adapter / "training_metadata.json").read_text())
    base_model = metadata["base_model"]
    results: dict[str, Any] = {"machine": describe(), "base_model": base_model, "adapter": str(adapter), "formats": {}}
    results["load_average_at_start"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fastbrain-bench-exports-") as tmp:
        work = Path(tmp)
        for fmt in ("peft", "merged", "gguf"):
            spec = {
                "export_id": f"bench-{fmt}",
                "format": fmt,
                "adapter_dir": str(adapter),
                "base_model": base_model,
                "models_dir": args.models_dir,
                "output_dir": str(work / fmt),
                "name": "bench",
                "system_prompt": args.system,
                "prompts": [args.prompt],
            }
            results["formats"][fmt] = run_export(spec, work)
            print(f"{fmt}: {results['formats'][fmt]['seconds']} s", file=sys.stderr)
        from shared.rules.templates import load_chat_tokenizer

        chat = load_chat_tokenizer(work / "merged")
        assert chat is not None
        prompt = chat.render_prompt(args.system, args.prompt)
        llama = llama_decode(work / "gguf" / "bench-q8_0.gguf", prompt, args.tokens)
        pytorch = torch_decode(base_model, args.models_dir, str(adapter), prompt, args.tokens)
    results["decode"] = {
        "tokens": args.tokens,
        "llama_cpp_q8_0_tokens_per_second": round(llama, 1),
        "pytorch_adapter_fp32_tokens_per_second": round(pytorch, 1),
        "ratio": round(llama / pytorch, 2),
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"Machine: {results['machine']}\n")
    print("| format | export time (s) | files |")
    print("|---|---|---|")
    for fmt, result in results["formats"].items():
        sizes = ", ".join(f"{f['name']} {f['size'] / 1e6:.1f} MB" for f in result["files"] if f["size"] > 100_000)
        print(f"| {fmt} | {result['seconds']} | {sizes or 'small files'} |")
    decode = results["decode"]
    print(
        f"\nDecode, {decode['tokens']} greedy tokens: llama.cpp q8_0 {decode['llama_cpp_q8_0_tokens_per_second']} "
        f"tok/s, PyTorch base fp32 + adapter {decode['pytorch_adapter_fp32_tokens_per_second']} tok/s "
        f"(ratio {decode['ratio']}x)"
    )


if __name__ == "__main__":
    main()
