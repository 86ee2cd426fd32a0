"""`gguf`: the merged model through llama.cpp's own converter, verified in llama.cpp, with a Modelfile.

Conversion: `convert_hf_to_gguf.py` from the llama.cpp tree llama-cpp-python was built from
(`converter.py`), one run per type (`--outtype f16`, `--outtype q8_0`); it writes the tokenizer,
the chat template and the eos/eot ids into the GGUF metadata.

Verification (llama-cpp-python, the same llama.cpp):
- the f16 file loads; its embedded chat template has the training template's sha256 and, rendered
  by llama-cpp-python's own Jinja formatter, gives the very string training renders for the skill's
  prompt; llama.cpp's tokenizer gives the same ids as training's; its end-of-turn id is training's;
- greedy decoding from that prompt gives the same first `greedy_tokens` tokens as the merged PyTorch
  model (fp32), up to the end-of-turn token when it comes sooner;
- every other type (q8_0) loads and its first greedy token is the PyTorch model's.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from services.gpu.exports import merged as merging
from services.gpu.exports import modelfile
from services.gpu.exports.converter import converter_dir
from services.gpu.exports.merged import Emit, Merged, VerificationFailed
from shared.schemas.exports import ExportSpec

CONVERT_TIMEOUT_SECONDS = 1800


def convert(merged_dir: Path, out: Path, outtype: str) -> None:
    """`convert_hf_to_gguf.py` on a merged HF folder; its output on failure in the error."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    result = subprocess.run(
        [sys.executable, str(script), str(merged_dir), "--outfile", str(out), "--outtype", outtype],
        capture_output=True,
        text=True,
        timeout=CONVERT_TIMEOUT_SECONDS,
    )
    if result.returncode != 0 or not out.is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-12:])
        raise RuntimeError(f"convert_hf_to_gguf.py --outtype {outtype} failed (exit {result.returncode}): {tail}")


def byte_level_tokenizer(folder: Path) -> bool:
    """Undo, in the converter's input only, what a GGUF round trip leaves in a byte-level BPE tokenizer.

    transformers rebuilds SmolLM2's tokenizer from its GGUF with `byte_fallback` and SentencePiece's
    decoders; llama.cpp's converter then takes it for a Llama SentencePiece vocabulary and writes one
    that llama.cpp cannot tokenize with. With a ByteLevel pre-tokenizer every byte has its own token,
    so byte fallback never fires and the tokenization is the same: the f16 check compares llama.cpp's
    token ids with training's to prove it. Returns whether it changed anything.
    """
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    byte_level = pre.get("type") == "ByteLevel" or any(
        p.get("type") == "ByteLevel" for p in pre.get("pretokenizers") or []
    )
    if model.get("type") != "BPE" or not model.get("byte_fallback") or not byte_level:
        return False
    model["byte_fallback"] = False
    decoder = data.get("decoder") or {}
    if decoder.get("type") == "Sequence":
        levels = [d for d in decoder.get("decoders") or [] if d.get("type") == "ByteLevel"]
        if levels:
            data["decoder"] = levels[0]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return True


def load(path: Path) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=2048, n_threads=max(1, os.cpu_count() or 1), verbose=False, seed=0)


def llama_greedy(llm: Any, tokens: list[int], n: int, stop_id: int) -> list[int]:
    out: list[int] = []
    for token in llm.generate(tokens, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        if token == stop_id or len(out) >= n:
            break
        out.append(int(token))
        if len(out) >= n:
            break
    return out


def _metadata_int(llm: Any, key: str) -> int | None:
    value = llm.metadata.get(key)
    return int(value) if value not in (None, "") else None


def verify_f16(path: Path, merged: Merged, spec: ExportSpec) -> dict[str, Any]:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = load(path)
    template = llm.metadata.get("tokenizer.chat_template")
    measured: dict[str, Any] = {"file": path.name}
    if not template:
        raise VerificationFailed("The GGUF holds no chat template.", measured)
    measured["template_sha256"] = hashlib.sha256(str(template).encode()).hexdigest()
    if measured["template_sha256"] != merged.chat.template_sha256:
        raise VerificationFailed("The GGUF's chat template is not the training template.", measured)
    eot = _metadata_int(llm, "tokenizer.ggml.eot_token_id")
    eos = _metadata_int(llm, "tokenizer.ggml.eos_token_id")
    measured.update(eot_token_id=eot, eos_token_id=eos, training_end_of_turn_id=merged.end_of_turn_id)
    if merged.end_of_turn_id not in (eot, eos):
        raise VerificationFailed("The GGUF's end-of-turn token is not the training template's.", measured)
    stop_id = merged.end_of_turn_id
    formatter = Jinja2ChatFormatter(
        template=str(template),
        eos_token=llm.detokenize([llm.token_eos()], special=True).decode(),
        bos_token=llm.detokenize([llm.token_bos()], special=True).decode(),
    )
    samples = []
    for prompt, text in zip(spec.prompts, merged.prompts, strict=True):
        messages: Any = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt.strip() else []
        messages.append({"role": "user", "content": prompt})
        rendered = formatter(messages=messages).prompt
        if rendered != text:
            raise VerificationFailed(
                "llama.cpp renders the skill's prompt differently from training.",
                {**measured, "llama_cpp_prompt": rendered, "training_prompt": text},
            )
        tokens = llm.tokenize(rendered.encode(), add_bos=False, special=True)
        hf_ids = merged.tokenizer(text, add_special_tokens=False).input_ids
        if list(tokens) != list(hf_ids):
            raise VerificationFailed("llama.cpp tokenizes the prompt differently from training.", measured)
        want = merging.greedy(merged.model, merged.tokenizer, text, spec.greedy_tokens, stop_id)
        got = llama_greedy(llm, list(tokens), spec.greedy_tokens, stop_id)
        sample = {
            "prompt": prompt,
            "pytorch": merged.tokenizer.decode(want),
            "llama_cpp": llm.detokenize(got).decode(errors="replace"),
            "tokens_compared": len(want),
            "matched": got == want,
            "pytorch_tokens": want,
            "llama_cpp_tokens": got,
        }
        samples.append(sample)
        if got != want:
            raise VerificationFailed(
                f"llama.cpp's greedy answer differs from the merged PyTorch model's "
                f"in its first {spec.greedy_tokens} tokens.",
                {**measured, "samples": samples},
            )
    del llm
    return {
        **measured,
        "prompt_rendering": "identical",
        "greedy_tokens": spec.greedy_tokens,
        "samples": samples,
        "passed": True,
    }


def verify_first_token(path: Path, merged: Merged, spec: ExportSpec) -> dict[str, Any]:
    llm = load(path)
    results = []
    for text in merged.prompts:
        want = merging.greedy(merged.model, merged.tokenizer, text, 1, merged.end_of_turn_id) or [merged.end_of_turn_id]
        tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
        got = llama_greedy(llm, list(tokens), 1, -1)
        results.append({"pytorch": want[0], "llama_cpp": got[0] if got else None})
        if not got or got[0] != want[0]:
            raise VerificationFailed(
                f"{path.name}: llama.cpp's first greedy token differs from the merged PyTorch model's.",
                {"file": path.name, "first_tokens": results},
            )
    del llm
    return {"file": path.name, "first_tokens": results, "passed": True}


def build(spec: ExportSpec, out: Path, emit: Emit) -> dict[str, Any]:
    """GGUF files and a Modelfile in `out`; returns the verification record."""
    converter_dir()  # fail before the slow part when the converter is missing
    work = out / ".merged"
    merged = merging.build(spec, work, emit)
    verification = dict(merged.verification)
    names = {q: f"{spec.name}-{q}.gguf" for q in spec.quantizations}
    step = 40 / len(names)
    if byte_level_tokenizer(work):
        emit(
            stage="convert",
            progress=44,
            message="Byte-level BPE tokenizer: byte_fallback off for llama.cpp's converter",
        )
    for index, (outtype, name) in enumerate(names.items()):
        emit(stage="convert", progress=45 + step * index, message=f"Converting to GGUF {outtype} (llama.cpp)")
        convert(work, out / name, outtype)
    for outtype, name in names.items():
        emit(stage="verify", progress=88, message=f"Verifying {name} in llama.cpp")
        if outtype == "f16":
            verification["gguf_f16"] = verify_f16(out / name, merged, spec)
        else:
            verification[f"gguf_{outtype}"] = verify_first_token(out / name, merged, spec)
    source = names.get("q8_0") or next(iter(names.values()))
    text, pieces = modelfile.write(merged.chat, source, spec.system_prompt, merged.end_of_turn)
    ollama_prompt = pieces.render(spec.system_prompt, [{"role": "user", "content": spec.prompts[0]}])
    if ollama_prompt != merged.prompts[0]:
        raise VerificationFailed("The Modelfile's TEMPLATE renders the skill's prompt differently from training.", {})
    (out / "Modelfile").write_text(text)
    verification["modelfile"] = {"from": source, "stop": merged.end_of_turn, "template_renders_training_prompt": True}
    _remove(work)
    return verification


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def convert_lora(adapter_dir: Path, base_dir: Path, out: Path) -> None:
    """`convert_lora_to_gguf.py` on a PEFT adapter, with the base's config from `base_dir` (no hub)."""
    script = converter_dir() / "convert_lora_to_gguf.py"
    result = subprocess.run(
        [sys.executable, str(script), "--base", str(base_dir), "--outfile", str(out), "--outtype", "f16",
         str(adapter_dir)],
        capture_output=True,
        text=True,
        timeout=CONVERT_TIMEOUT_SECONDS,
    )  # fmt: skip
    if result.returncode != 0 or not out.is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-12:])
        raise RuntimeError(f"convert_lora_to_gguf.py failed (exit {result.returncode}): {tail}")


def _base_copy(source: Path, target: Path) -> Path:
    """The base model folder for the converters: its files linked, its tokenizer made llama.cpp-readable."""
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file() and file.name != "tokenizer.json":
            (target / file.name).symlink_to(file.resolve())
    (target / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())
    byte_level_tokenizer(target)
    return target


def build_lora(spec: ExportSpec, out: Path, emit: Emit) -> dict[str, Any]:
    """The LoRA alone as a GGUF adapter for llama.cpp's `--lora`, with the base GGUF it was verified on.

    Verified: llama.cpp with the base f16 GGUF plus this LoRA gives the same greedy tokens as the merged
    model's f16 GGUF (itself checked against the merged PyTorch model first, as a `gguf` export is).
    """
    from services.gpu.models import ensure_model

    converter_dir()
    work = out / ".work"
    merged = merging.build(spec, work / "merged", emit)
    verification = dict(merged.verification)
    byte_level_tokenizer(work / "merged")
    emit(stage="convert", progress=45, message="Converting the merged model to GGUF f16 (the reference)")
    reference = work / "merged-f16.gguf"
    convert(work / "merged", reference, "f16")
    verification["gguf_f16"] = verify_f16(reference, merged, spec)
    base_dir = _base_copy(ensure_model(spec.base_model, spec.models_dir), work / "base")
    base_name, lora_name = f"{spec.base_model}-f16.gguf", f"{spec.name}-lora-f16.gguf"
    emit(stage="convert", progress=60, message="Converting the base model to GGUF f16")
    convert(base_dir, out / base_name, "f16")
    emit(stage="convert", progress=70, message="Converting the LoRA to a GGUF adapter (convert_lora_to_gguf.py)")
    convert_lora(Path(spec.adapter_dir), base_dir, out / lora_name)
    emit(stage="verify", progress=85, message="Verifying: base GGUF + LoRA against the merged GGUF in llama.cpp")
    from llama_cpp import Llama

    with_lora = Llama(
        model_path=str(out / base_name),
        lora_path=str(out / lora_name),
        n_ctx=2048,
        n_threads=max(1, os.cpu_count() or 1),
        verbose=False,
        seed=0,
    )
    samples = []
    for text, sample in zip(merged.prompts, verification["gguf_f16"]["samples"], strict=True):
        tokens = with_lora.tokenize(text.encode(), add_bos=False, special=True)
        got = llama_greedy(with_lora, list(tokens), spec.greedy_tokens, merged.end_of_turn_id)
        want = sample["llama_cpp_tokens"]
        samples.append({"prompt": sample["prompt"], "merged_gguf_tokens": want, "base_plus_lora_tokens": got})
        if got != want:
            raise VerificationFailed(
                "llama.cpp with the base GGUF and this LoRA answers differently from the merged GGUF.",
                {"samples": samples},
            )
    del with_lora
    verification["gguf_lora"] = {"base": base_name, "lora": lora_name, "samples": samples, "passed": True}
    _remove(work)
    return verification
