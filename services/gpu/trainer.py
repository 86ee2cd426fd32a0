"""LoRA fine-tuning of one skill: `train(spec)` yields event payloads live, step by step.

Same code on the local backend (run as a subprocess, see `main`) and on Modal.

    python -m services.gpu.trainer SPEC.json

writes one JSON payload per line to stdout (`log`, `progress`, `complete`, or a final
`error`); everything libraries print goes to stderr. Exit 0 after `complete`, 1 after
`error`, 143 on SIGTERM (after an `error` line with category CANCELLED).
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Generator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from services.gpu import faults
from services.gpu.catalog import ModelInfo, get_model, is_prequantized_4bit, require_loadable
from shared.errors import DataFormatError, JobCancelled, ModelLoadError, describe
from shared.schemas.training import SMALL_SKILL_EXAMPLES, Hyperparameters, TrainingSpec

if TYPE_CHECKING:
    from transformers import TrainerCallback

LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEVICE_ENV = "FASTBRAIN_TRAIN_DEVICE"  # "cpu", "cuda" or "auto" (default)
# On CUDA, batches are padded to a multiple of this many tokens: each new sequence length costs
# kernels a one-off set-up (measured on an H200: ~0.3 s a new shape, against 0.17 s for the step
# itself; docs/benchmarks.md), so few distinct lengths train faster than exact ones.
CUDA_PAD_MULTIPLE: int | None = 64
UNSLOTH_ENV = "FASTBRAIN_UNSLOTH"  # "0" turns the Unsloth path off (default: on where CUDA and unsloth are)

Payload = dict[str, Any]

# TRL output dirs of trainings in progress, removed by the SIGTERM handler too (it exits without unwinding).
_STAGING_DIRS: set[Path] = set()


def log(message: str, level: str = "info") -> Payload:
    return {"type": "log", "level": level, "message": message}


def _count(n: int) -> str:
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}K"
    return str(n)


def library_versions() -> dict[str, str]:
    versions: dict[str, str] = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "unsloth", "bitsandbytes"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _gpu_memory_gb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 1024**3, 3)


def _make_callback(
    events: queue.Queue[Payload],
    stop: threading.Event,
    history: list[Payload],
    eval_examples: list[dict[str, list[int]]] | None = None,
) -> TrainerCallback:
    """A TrainerCallback that turns each optimizer step's log into a `progress` payload.

    With held-out examples, the held-out loss is measured at about 25%, 50% and 75% of the steps and
    carried as `eval_loss` on that step's `progress` payload (before and after: by `train`).
    """
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

    from services.gpu.data import held_out_loss

    class ProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self.started = 0.0
            self.last_step = 0
            self.first_step = 0
            self.tokens_at_start = 0
            self.eval_steps: set[int] = set()
            self.pending_eval: float | None = None

        def on_train_begin(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
        ) -> None:
            self.started = time.perf_counter()
            # After a resume the counters start where the checkpoint left off.
            self.first_step = self.last_step = state.global_step
            self.tokens_at_start = int(state.num_input_tokens_seen or 0)
            total = max(state.max_steps, 1)
            self.eval_steps = {-(-total * quarter // 4) for quarter in (1, 2, 3)} - {total}
            if state.global_step:
                events.put(
                    log(f"Resumed at step {state.global_step}/{state.max_steps}: optimizer and schedule restored")
                )
            effective = args.per_device_train_batch_size * args.gradient_accumulation_steps
            events.put(
                log(
                    f"Training started: {state.max_steps} steps, {int(state.num_train_epochs)} epoch(s), "
                    f"effective batch {effective}"
                )
            )

        def on_step_end(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
        ) -> None:
            faults.step_delay()
            if stop.is_set():
                control.should_training_stop = True
            elif eval_examples and state.global_step in self.eval_steps and kwargs.get("model") is not None:
                self.pending_eval = held_out_loss(kwargs["model"], eval_examples)

        def on_log(
            self,
            args: TrainingArguments,
            state: TrainerState,
            control: TrainerControl,
            logs: dict[str, float] | None = None,
            **kwargs: Any,
        ) -> None:
            if not logs or "loss" not in logs or state.global_step <= self.last_step:
                return
            self.last_step = step = state.global_step
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            total = max(state.max_steps, 1)
            tokens = int(state.num_input_tokens_seen or 0) - self.tokens_at_start
            done_here = max(step - self.first_step, 1)
            payload: Payload = {
                "type": "progress",
                "step": step,
                "total_steps": total,
                "epoch": round(float(state.epoch or 0.0), 4),
                "total_epochs": int(state.num_train_epochs),
                "loss": float(logs["loss"]),
                "learning_rate": float(logs["learning_rate"]) if "learning_rate" in logs else None,
                "grad_norm": float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
                "tokens_per_second": round(tokens / elapsed, 2),
                "eta_seconds": round(elapsed / done_here * max(total - step, 0), 1),
                "progress": round(min(100.0, 100.0 * step / total), 2),
                "gpu_memory_used_gb": _gpu_memory_gb(),
                "tokens_seen": tokens,
                "elapsed_seconds": round(elapsed, 2),
            }
            if self.pending_eval is not None:
                payload["eval_loss"], self.pending_eval = self.pending_eval, None
            history.append(payload)
            events.put(payload)

    return ProgressCallback()


def _sft_trainer_class() -> type:
    """TRL's SFTTrainer, computing the loss with the model's own forward where TRL's fused LM head cannot run.

    TRL 1.x always computes the SFT loss with a Triton kernel (a fused, chunked LM head). The CPU build of
    torch has no Triton, and Triton kernels need a GPU anyway, so on CPU the loss comes from the model's
    forward with `labels` (plain cross-entropy over the labelled tokens; the same value, without the
    entropy/token-accuracy metrics).
    """
    from transformers import Trainer
    from trl import SFTTrainer  # type: ignore[attr-defined]
    from trl.trainer import utils as trl_utils

    fused_kernel = getattr(trl_utils, "_ChunkedLogProbFunction", None) is not None

    class FastBrainSFTTrainer(SFTTrainer):
        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            faults.check_memory_budget(inputs["input_ids"])
            device_type = inputs["input_ids"].device.type
            if fused_kernel and device_type in ("cuda", "xpu"):
                return super().compute_loss(  # type: ignore[no-untyped-call]
                    model, inputs, return_outputs, num_items_in_batch
                )
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return FastBrainSFTTrainer


def _latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete `checkpoint-<step>` directory (one with trainer state)."""
    found = [
        (int(p.name.split("-")[-1]), p)
        for p in directory.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return max(found)[1] if found else None


def _resolve_device(device: str | None) -> str:
    from services.gpu.models import resolve_device

    return resolve_device(device or os.environ.get(DEVICE_ENV) or "auto")


def unsloth_wanted(device: str) -> bool:
    """The Unsloth path: on CUDA, with `unsloth` importable, unless FASTBRAIN_UNSLOTH=0."""
    if not device.startswith("cuda") or os.environ.get(UNSLOTH_ENV, "1") == "0":
        return False
    return importlib.util.find_spec("unsloth") is not None


def _load_unsloth(spec: TrainingSpec, info: ModelInfo, models_dir: Path, device: str) -> tuple[Any, Any]:
    """Base model through Unsloth's `FastLanguageModel` (4-bit for bnb-4bit checkpoints), LoRA not applied yet."""
    import unsloth  # noqa: F401  # patches transformers/TRL; must come before the model is built
    from unsloth import FastLanguageModel

    from services.gpu.models import model_source

    hp = spec.hyperparameters
    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=model_source(spec.base_model, models_dir),
            max_seq_length=hp.max_seq_length,
            dtype=None,  # bf16 where supported, else fp16
            load_in_4bit=is_prequantized_4bit(spec.base_model),
            device_map={"": device},
        )
    except Exception as exc:
        raise ModelLoadError(f"Failed to load model {info.id!r} with Unsloth: {exc}") from exc
    return model, tokenizer


def _apply_unsloth_lora(model: Any, spec: TrainingSpec) -> Any:
    """LoRA through Unsloth, with its offloaded gradient checkpointing. Same modules and ranks as the PEFT path."""
    from unsloth import FastLanguageModel

    hp = spec.hyperparameters
    return FastLanguageModel.get_peft_model(
        model,
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=LORA_TARGET_MODULES,
        bias="none",
        use_gradient_checkpointing="unsloth" if hp.gradient_checkpointing is not False else False,
        random_state=hp.seed,
        max_seq_length=hp.max_seq_length,
    )


# A base model loaded ahead of a job (the Modal class's enter hook), taken by the first `train` that matches.
_WARM: dict[tuple[str, str, bool], tuple[Any, int]] = {}


def warm_up(model_id: str, models_dir: str | Path, device: str | None = None, max_seq_length: int = 2048) -> str:
    """Load `model_id` now (weights downloaded/cached, on the GPU) so the next `train` of it starts at once.

    Returns the path taken ("unsloth" or "peft"). Used by the Modal class's `@modal.enter` hook.
    """
    from services.gpu.models import load_for_training

    resolved = _resolve_device(device)
    info = require_loadable(model_id, resolved)
    use_unsloth = unsloth_wanted(resolved)
    if use_unsloth:
        probe = TrainingSpec(
            job_id="warm-up",
            skill_id="warm-up",
            base_model=model_id,
            system_prompt="",
            conversations=[],
            hyperparameters=Hyperparameters(max_seq_length=max_seq_length),
            output_dir="",
            models_dir=str(models_dir),
        )
        model, _ = _load_unsloth(probe, info, Path(models_dir), resolved)
    else:
        model, _, _ = load_for_training(model_id, models_dir, resolved, None)
    _WARM[(model_id, resolved, use_unsloth)] = (model, max_seq_length)
    return "unsloth" if use_unsloth else "peft"


def _take_warm(model_id: str, device: str, use_unsloth: bool, max_seq_length: int) -> Any | None:
    """The warm model if it fits this job (once: LoRA layers are injected into it)."""
    entry = _WARM.pop((model_id, device, use_unsloth), None)
    if entry is None or entry[1] < max_seq_length:
        return None
    return entry[0]


def train(spec: TrainingSpec, device: str | None = None) -> Generator[Payload, None, None]:
    """Fine-tune `spec.base_model` on the skill and save the adapter to `spec.output_dir`.

    Yields `log` and `progress` payloads as they happen, then one `complete`. Raises on
    failure (the caller turns it into an `error` payload with `shared.errors.describe`).
    Closing the generator early stops training after the current step.
    """
    info = get_model(spec.base_model)
    if not spec.conversations:
        raise DataFormatError("invalid format: the skill has no training conversations (ensure no empty conversations)")

    import transformers
    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig  # type: ignore[attr-defined]

    from services.gpu import data as data_mod
    from services.gpu.models import ensure_model, load_for_training, load_tokenizer, precision_for

    transformers.logging.set_verbosity_warning()  # type: ignore[no-untyped-call]
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    hp = spec.hyperparameters
    transformers.set_seed(hp.seed)
    resolved_device = _resolve_device(device)
    # GPU-catalog (hub) models train where CUDA is (the Modal backend); a CPU backend refuses them.
    require_loadable(spec.base_model, resolved_device)
    use_unsloth = unsloth_wanted(resolved_device)
    if use_unsloth:
        import unsloth  # noqa: F401  # before TRL builds the trainer: Unsloth patches it

    faults.maybe_fail_network(spec.retry)
    models_dir = Path(spec.models_dir)
    if not info.loadable_locally:
        yield log(f"Loading base model {info.display_name} from the hub ({info.source})...")
    elif not (models_dir / spec.base_model).is_dir():
        yield log(f"Preparing base model {info.display_name} (first use: converting, about a minute)...")
        started = time.perf_counter()
        ensure_model(spec.base_model, models_dir)
        yield log(f"Base model ready in {time.perf_counter() - started:.1f}s")

    tokenizer = load_tokenizer(spec.base_model, models_dir)
    # Every example through the model's own chat template: a broken one must never be trained on.
    template = data_mod.check_chat_template(tokenizer, spec.system_prompt, spec.conversations, hp.max_seq_length)
    if not template.ok:
        raise DataFormatError(f"invalid format: {template.message()}")
    yield log(
        f"Chat template check passed: {template.total} examples, end-of-turn token {template.end_of_turn!r}, "
        f"template sha256 {template.template_sha256[:12]}"
    )
    examples, report = data_mod.prepare_examples(tokenizer, spec.system_prompt, spec.conversations, hp.max_seq_length)
    too_long = report.warning()
    if too_long:
        yield log(too_long, level="warning")
    train_index, eval_index = data_mod.eval_split(len(examples), hp.seed)
    eval_examples = [examples[i] for i in eval_index]
    examples = [examples[i] for i in train_index]
    if eval_examples:
        yield log(
            f"Held out {len(eval_examples)} of {len(eval_index) + len(train_index)} examples for evaluation "
            f"(seed {hp.seed}): the improvement is measured on answers the adapter never trains on"
        )
    else:
        yield log(
            f"No evaluation split: {len(examples)} examples (under {data_mod.MIN_EXAMPLES_FOR_EVAL}); "
            "held-out loss is not measured",
            level="warning",
        )
    dataset = data_mod.examples_to_dataset(examples)
    n_tokens = sum(len(ids) for ids in dataset["input_ids"])
    n_labels = sum(sum(1 for label in labels if label != data_mod.IGNORE_INDEX) for labels in dataset["labels"])
    dropped = len(spec.conversations) - len(dataset) - len(eval_examples)
    yield log(
        f"Loaded {len(dataset)} training examples ({n_tokens} tokens, {n_labels} assistant tokens)"
        + (f"; {dropped} dropped: truncated before their answer" if dropped else "")
    )

    model: Any
    warm = _take_warm(spec.base_model, resolved_device, use_unsloth, hp.max_seq_length)
    if use_unsloth:
        model = warm if warm is not None else _load_unsloth(spec, info, models_dir, resolved_device)[0]
        # Unsloth's own (offloaded) gradient checkpointing replaces the Trainer's.
        precision = precision_for(resolved_device, hp.gradient_checkpointing)
        model = _apply_unsloth_lora(model, spec)
    else:
        if warm is not None and hp.gradient_checkpointing is None:
            model, precision = warm, precision_for(resolved_device, None)
        else:
            model, _, precision = load_for_training(
                spec.base_model, models_dir, resolved_device, hp.gradient_checkpointing
            )
        lora = LoraConfig(
            r=hp.lora_r,
            lora_alpha=hp.lora_alpha,
            lora_dropout=hp.lora_dropout,
            target_modules=LORA_TARGET_MODULES,
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    training_path = "unsloth" if use_unsloth else "peft"
    yield log(
        f"Model loaded: {info.display_name} ({precision.device}, {precision.dtype_name})"
        f"{' 4-bit' if is_prequantized_4bit(spec.base_model) else ''}, {training_path} path"
        f"{', already warm' if warm is not None else ''}"
    )
    trainable, total_params = model.get_nb_trainable_parameters()
    eval_before = None
    if eval_examples:
        with model.disable_adapter():  # the base model alone
            eval_before = data_mod.held_out_loss(model, eval_examples)
        yield log(f"Held-out loss before training (base model): {eval_before:.4f} on {len(eval_examples)} examples")
    yield log(
        f"LoRA configured (r={hp.lora_r}, alpha={hp.lora_alpha}, trainable: {_count(trainable)} params, "
        f"{100 * trainable / max(total_params, 1):.2f}% of {_count(total_params)})"
    )

    # Checkpoints (model, optimizer, scheduler, RNG and step) go to the adapter
    # store so another worker can resume; without a checkpoint dir nothing is kept.
    if spec.checkpoint_dir:
        staging = Path(spec.checkpoint_dir)
        staging.mkdir(parents=True, exist_ok=True)
    else:
        staging = Path(tempfile.mkdtemp(prefix=f"fastbrain-trainer-{spec.job_id}-"))
        _STAGING_DIRS.add(staging)
    resume_from = _latest_checkpoint(staging) if spec.checkpoint_dir else None
    trl_checkpointing = precision.gradient_checkpointing and not use_unsloth
    pad_multiple = CUDA_PAD_MULTIPLE if precision.device.startswith("cuda") else None  # CPU: no set-up cost to save
    try:
        config = SFTConfig(
            output_dir=str(staging),
            per_device_train_batch_size=hp.batch_size,
            gradient_accumulation_steps=hp.gradient_accumulation_steps,
            learning_rate=hp.learning_rate,
            num_train_epochs=hp.epochs,
            max_steps=hp.max_steps if hp.max_steps is not None else -1,
            warmup_steps=hp.warmup_ratio,  # a float < 1 is a ratio of the total steps
            lr_scheduler_type=hp.lr_scheduler,
            logging_steps=1,
            save_strategy="steps" if spec.checkpoint_dir else "no",
            # A float below 1 is a share of the run: about 10% by default.
            save_steps=spec.checkpoint_every_steps or 0.1,
            save_total_limit=2,
            report_to="none",
            seed=hp.seed,
            data_seed=hp.seed,
            bf16=precision.bf16,
            fp16=precision.fp16,
            use_cpu=not precision.device.startswith("cuda"),
            gradient_checkpointing=trl_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if trl_checkpointing else None,
            max_length=hp.max_seq_length,
            packing=False,
            dataset_kwargs={"skip_prepare_dataset": True},  # already tokenized with assistant-only labels
            remove_unused_columns=False,
            include_num_input_tokens_seen="non_padding",
            disable_tqdm=True,
            dataloader_num_workers=0,
            optim="adamw_torch",
            pad_to_multiple_of=pad_multiple,
        )
        events: queue.Queue[Payload] = queue.Queue()
        stop = threading.Event()
        history: list[Payload] = []
        trainer_class, train_data, collator = _sft_trainer_class(), dataset, None
        # Several examples per row, each attending only to itself (services/gpu/packing.py). Unset means
        # "when it pays": a small skill has few optimizer steps already and packing would cut them further.
        pack = hp.packing if hp.packing is not None else len(dataset) >= SMALL_SKILL_EXAMPLES
        if hp.packing is None and not pack:
            yield log(f"Packing off: {len(dataset)} examples (under {SMALL_SKILL_EXAMPLES}) train one per row")
        if pack:
            from services.gpu import packing

            packed = packing.pack_for_training(
                dataset, hp.max_seq_length, tokenizer.pad_token_id, trainer_class, pad_multiple
            )
            trainer_class, train_data, collator = packed.trainer_class, packed.dataset, packed.collator
            yield log(packed.message(hp.max_seq_length))
        trainer = trainer_class(
            model=model,
            args=config,
            train_dataset=train_data,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=[_make_callback(events, stop, history, eval_examples)],
        )

        failure: list[BaseException] = []
        done = threading.Event()

        def run() -> None:
            try:
                trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            except BaseException as exc:  # handed to the generator's thread
                failure.append(exc)
            finally:
                done.set()

        started = time.perf_counter()
        thread = threading.Thread(target=run, name=f"trainer-{spec.job_id}", daemon=True)
        thread.start()
        try:
            while not (done.is_set() and events.empty()):
                try:
                    yield events.get(timeout=0.2)
                except queue.Empty:
                    continue
        finally:
            if not done.is_set():
                stop.set()
                thread.join()
    finally:
        if not spec.checkpoint_dir:
            shutil.rmtree(staging, ignore_errors=True)  # TRL's output_dir: nothing is saved there
            _STAGING_DIRS.discard(staging)
    if failure:
        raise failure[0]
    training_time = time.perf_counter() - started
    if stop.is_set():
        raise JobCancelled("Training was stopped before the end")

    output_dir = Path(spec.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # The catalog id, not this machine's cache path: the adapter must load on either backend.
    for peft_config in trainer.model.peft_config.values():
        peft_config.base_model_name_or_path = spec.base_model
    trainer.model.save_pretrained(output_dir, save_embedding_layers=False)
    (output_dir / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub, not ours

    losses = [p["loss"] for p in history if p.get("loss") is not None]
    eval_after = data_mod.held_out_loss(trainer.model, eval_examples) if eval_examples else None
    improvement_pct = (
        round(100.0 * (eval_before - eval_after) / eval_before, 2)
        if eval_before is not None and eval_after is not None and eval_before > 0
        else None
    )
    if eval_after is not None:
        yield log(
            f"Held-out loss after training: {eval_after:.4f} (before {eval_before:.4f}, "
            f"improvement {improvement_pct}%) on {len(eval_examples)} examples"
        )
    train_tokens = int(trainer.state.num_input_tokens_seen or 0)
    # Throughput over the optimizer steps themselves (as in the progress events), not the setup around them.
    step_seconds = history[-1]["elapsed_seconds"] if history else training_time
    tokens_per_second = round(train_tokens / step_seconds, 2) if step_seconds > 0 else None
    metrics: dict[str, Any] = {
        "initial_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "steps": trainer.state.global_step,
        "train_tokens": train_tokens,
        "tokens_per_second": tokens_per_second,
        "training_time_seconds": round(training_time, 2),
        "loss_history": [{"step": p["step"], "loss": p["loss"]} for p in history],
        "examples": len(dataset),
        "trainable_parameters": trainable,
        "eval_examples": len(eval_examples),
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "improvement_pct": improvement_pct,
        "eval_loss_history": [{"step": p["step"], "eval_loss": p["eval_loss"]} for p in history if "eval_loss" in p],
    }
    metadata_doc: dict[str, Any] = {
        "job_id": spec.job_id,
        "skill_id": spec.skill_id,
        "attempt": spec.attempt,
        "base_model": spec.base_model,
        "base_model_source": info.source,
        "config": hp.model_dump(mode="json"),
        "lora_target_modules": LORA_TARGET_MODULES,
        "dataset_sha256": data_mod.dataset_sha256(spec.system_prompt, spec.conversations),
        "dataset_examples": len(spec.conversations),
        "chat_template_sha256": data_mod.chat_template_sha256(tokenizer),
        "metrics": metrics,
        "library_versions": library_versions(),
        "seed": hp.seed,
        "device": precision.device,
        "dtype": precision.dtype_name,
        "gradient_checkpointing": precision.gradient_checkpointing,
        "training_path": training_path,
        "quantization": "bnb-4bit" if is_prequantized_4bit(spec.base_model) else None,
        "created_at": datetime.now(UTC).isoformat(),
    }
    (output_dir / "training_metadata.json").write_text(json.dumps(metadata_doc, indent=2) + "\n")
    yield log(f"Adapter saved ({trainer.state.global_step} steps, {training_time:.1f}s)")
    yield {
        "type": "complete",
        "final_loss": metrics["final_loss"],
        "initial_loss": metrics["initial_loss"],
        "training_time_seconds": metrics["training_time_seconds"],
        "adapter_path": str(output_dir),
        "steps": metrics["steps"],
        "tokens_per_second": tokens_per_second,
        "training_path": training_path,
        "peak_gpu_memory_gb": _gpu_memory_gb(),
        "eval_examples": len(eval_examples),
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "improvement_pct": improvement_pct,
    }


class _EventWriter:
    """One JSON line per payload on a private dup of the original stdout. Main thread only.

    `cancel` may be called from a signal handler, which can interrupt `write` half-way: then
    the line in progress is finished first, so stdout never holds a torn line.
    """

    def __init__(self, fd: int) -> None:
        self._stream = os.fdopen(fd, "w", encoding="utf-8", buffering=1)
        self._busy = False
        self._pending: tuple[Payload, int] | None = None

    def write(self, payload: Payload) -> None:
        line = json.dumps(payload, default=str, ensure_ascii=False) + "\n"
        self._busy = True
        try:
            self._stream.write(line)
            self._stream.flush()
        finally:
            self._busy = False
        if self._pending is not None:
            self._exit()

    def cancel(self, payload: Payload, exit_code: int) -> None:
        """Write `payload` as the last line and exit the process at once (no cleanup, no waiting for a step)."""
        self._pending = (payload, exit_code)
        if not self._busy:
            self._exit()

    def _exit(self) -> None:
        assert self._pending is not None
        payload, exit_code = self._pending
        try:
            self._stream.write(json.dumps(payload, default=str, ensure_ascii=False) + "\n")
            self._stream.flush()
        finally:
            os._exit(exit_code)


def _watch_parent(interval: float = 0.5) -> None:
    """End this trainer when the worker that started it dies (even by SIGKILL).

    The trainer runs in its own session so cancel can kill its whole group; the
    flip side is that the worker's death does not reach it, so it watches.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: `python -m services.gpu.trainer SPEC.json`."""
    args = sys.argv[1:] if argv is None else argv
    # Keep stdout for events only: libraries (and C extensions) that print go to stderr.
    sys.stdout.flush()
    writer = _EventWriter(os.dup(1))
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        for staging in list(_STAGING_DIRS):
            shutil.rmtree(staging, ignore_errors=True)
        writer.cancel({"type": "error", **describe(JobCancelled("Training was cancelled (SIGTERM)"))}, 128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    _watch_parent()
    try:
        if len(args) != 1:
            raise DataFormatError("invalid format: usage: python -m services.gpu.trainer SPEC.json")
        spec = TrainingSpec.model_validate_json(Path(args[0]).read_text(encoding="utf-8"))
        for payload in train(spec):
            writer.write(payload)
    except KeyboardInterrupt:
        writer.write({"type": "error", **describe(JobCancelled("Training was interrupted"))})
        return 1
    except Exception as exc:
        writer.write({"type": "error", **describe(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
