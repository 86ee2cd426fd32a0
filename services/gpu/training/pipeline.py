"""LoRA fine-tuning of one skill: `train(spec)` yields event payloads live, step by step.

The run, as named steps (each yields its `log` payloads and returns what the next needs):

1. `_set_up`: the catalog entry, the device, the Unsloth path or not, the test fault hooks;
2. `_prepare_base_model`: the base model converted/built into the cache on first use;
3. `_prepare_data`: the chat-template check, the tokenized examples, the held-out split;
4. `_prepare_model`: the base model with LoRA (`model.py`), its held-out loss before training;
5. `_fit`: TRL's SFTTrainer on a thread, resumed from the job's newest checkpoint, its
   `progress` payloads streamed as they come (`callbacks.py`);
6. `_save`: the best measured weights back in the model when the last are worse (`best.py`), the
   adapter, the side-by-side answers to held-out prompts (`evaluation.py`), `training_metadata.json`,
   then the `complete` payload.

Same code on the local backend (`python -m services.gpu.trainer`) and on Modal.
"""

from __future__ import annotations

import json
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from services.gpu import faults
from services.gpu.catalog import ModelInfo, get_model, is_prequantized_4bit, require_loadable
from services.gpu.training.best import BestWeights
from services.gpu.training.callbacks import (
    Payload,
    gpu_memory_gb,
    log,
    make_progress_callback,
    make_watchdog_callback,
)
from services.gpu.training.checkpoints import Checkpoint, attempt_dir, discard_from, latest_checkpoint
from services.gpu.training.model import (
    LORA_TARGET_MODULES,
    TrainableModel,
    load_trainable_model,
    resolve_device,
    unsloth_wanted,
)
from shared.errors import DataFormatError, JobCancelled, TrainingDiverged
from shared.rules.split import MIN_EXAMPLES_FOR_EVAL, eval_split
from shared.rules.templates import LENGTH_PROBLEMS, ChatTokenizer, check_chat_template
from shared.schemas.training import SMALL_SKILL_EXAMPLES, TrainingSpec

# On CUDA, batches are padded to a multiple of this many tokens: each new sequence length costs
# kernels a one-off set-up (measured on an H200: ~0.3 s a new shape, against 0.17 s for the step
# itself; docs/benchmarks.md), so few distinct lengths train faster than exact ones.
CUDA_PAD_MULTIPLE: int | None = 64

# TRL output dirs of trainings in progress, removed by the SIGTERM handler too (it exits without unwinding).
STAGING_DIRS: set[Path] = set()

Step = Generator[Payload, None, Any]


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


def sft_trainer_class() -> type:
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
        fault_retry = 0  # the job's try (spec.retry), for the test NaN-loss hook

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
                result = super().compute_loss(  # type: ignore[no-untyped-call]
                    model, inputs, return_outputs, num_items_in_batch
                )
            else:
                inputs["use_cache"] = False
                result = Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            step = self.state.global_step + 1  # the optimizer step this loss is for
            if isinstance(result, tuple):
                return (faults.poison_loss(result[0], step, self.fault_retry), *result[1:])
            return faults.poison_loss(result, step, self.fault_retry)

    return FastBrainSFTTrainer


# --- 1. set up -----------------------------------------------------------------------------------------------


@dataclass
class Setup:
    info: ModelInfo
    device: str
    use_unsloth: bool


def _set_up(spec: TrainingSpec, device: str | None) -> Setup:
    info = get_model(spec.base_model)
    if not spec.conversations:
        raise DataFormatError("invalid format: the skill has no training conversations (ensure no empty conversations)")

    import peft  # noqa: F401  # transformers, PEFT and TRL load first, Unsloth (below) after them
    import transformers
    import trl  # noqa: F401

    transformers.logging.set_verbosity_warning()  # type: ignore[no-untyped-call]
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    transformers.set_seed(spec.hyperparameters.seed)
    resolved = resolve_device(device)
    # GPU-catalog (hub) models train where CUDA is (the Modal backend); a CPU backend refuses them.
    require_loadable(spec.base_model, resolved)
    use_unsloth = unsloth_wanted(resolved)
    if use_unsloth:
        import unsloth  # noqa: F401  # before TRL builds the trainer: Unsloth patches it

    faults.maybe_fail_network(spec.retry)
    return Setup(info, resolved, use_unsloth)


# --- 2. base model -------------------------------------------------------------------------------------------


def _prepare_base_model(spec: TrainingSpec, setup: Setup) -> Step:
    from services.gpu.models import ensure_model

    info, models_dir = setup.info, Path(spec.models_dir)
    if not info.loadable_locally:
        yield log(f"Loading base model {info.display_name} from the hub ({info.source})...")
    elif not (models_dir / spec.base_model).is_dir():
        yield log(f"Preparing base model {info.display_name} (first use: converting, about a minute)...")
        started = time.perf_counter()
        ensure_model(spec.base_model, models_dir)
        yield log(f"Base model ready in {time.perf_counter() - started:.1f}s")


# --- 3. data -------------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    tokenizer: Any  # the HF tokenizer (TRL's processing class)
    chat: ChatTokenizer
    dataset: Any  # datasets.Dataset of the training examples
    eval_examples: list[dict[str, list[int]]]
    eval_conversations: list[Any]  # the skill's conversations that `eval_examples` were tokenized from


def _prepare_data(spec: TrainingSpec) -> Step:
    """Every example through the model's own chat template: a broken one must never be trained on."""
    from services.gpu import data
    from services.gpu.models import load_tokenizer

    hp = spec.hyperparameters
    tokenizer = load_tokenizer(spec.base_model, spec.models_dir)
    chat = data.chat_tokenizer(tokenizer)
    template = check_chat_template(chat, spec.system_prompt, spec.conversations, hp.max_seq_length)
    if hp.drop_overlong:
        # The OOM recovery halved max_seq_length: the examples whose answer it cuts are dropped below.
        overlong = template.indices(*LENGTH_PROBLEMS)
        if overlong and len(overlong) == template.total:
            raise DataFormatError(
                f"invalid format: max_seq_length={hp.max_seq_length} (shortened to fit in memory) cuts an answer "
                f"of all {template.total} examples, so none is left to train on; shorten the examples and "
                "system prompt, or train on a GPU with more memory"
            )
        template = template.without(set(overlong))
    if not template.ok:
        raise DataFormatError(f"invalid format: {template.message()}")
    yield log(
        f"Chat template check passed: {template.total} examples, end-of-turn token {template.end_of_turn!r}, "
        f"template sha256 {template.template_sha256[:12]}"
    )
    examples, report = data.prepare_examples(
        chat, spec.system_prompt, spec.conversations, hp.max_seq_length, drop_cut_answers=hp.drop_overlong
    )
    dropped = report.dropped_warning()
    if dropped:
        yield log(
            f"{dropped}: max_seq_length was shortened to fit in memory, and a cut answer would teach the model "
            "not to stop",
            level="warning",
        )
    too_long = report.warning()
    if too_long:
        yield log(too_long, level="warning")
    train_index, eval_index = eval_split(len(examples), hp.seed)
    eval_examples = [examples[i] for i in eval_index]
    skipped = {*report.cut, *report.dropped}
    kept_conversations = [turn for index, turn in enumerate(spec.conversations) if index not in skipped]
    eval_conversations = [kept_conversations[i] for i in eval_index]
    examples = [examples[i] for i in train_index]
    if eval_examples:
        yield log(
            f"Held out {len(eval_examples)} of {len(eval_index) + len(train_index)} examples for evaluation "
            f"(seed {hp.seed}): the improvement is measured on answers the adapter never trains on"
        )
    else:
        yield log(
            f"No evaluation split: {len(examples)} examples (under {MIN_EXAMPLES_FOR_EVAL}); "
            "held-out loss is not measured",
            level="warning",
        )
    dataset = data.examples_to_dataset(examples)
    n_tokens = sum(len(ids) for ids in dataset["input_ids"])
    n_labels = sum(sum(1 for label in labels if label != data.IGNORE_INDEX) for labels in dataset["labels"])
    notes = [f"{len(report.cut)} dropped: truncated before their answer"] if report.cut else []
    notes += [f"{len(report.dropped)} dropped: an answer cut by max_seq_length"] if report.dropped else []
    yield log(
        f"Loaded {len(dataset)} training examples ({n_tokens} tokens, {n_labels} assistant tokens)"
        + "".join(f"; {note}" for note in notes)
    )
    return Prepared(tokenizer, chat, dataset, eval_examples, eval_conversations)


# --- 4. model ------------------------------------------------------------------------------------------------


@dataclass
class Model:
    trainable: TrainableModel
    trainable_parameters: int
    eval_before: float | None


def _prepare_model(spec: TrainingSpec, setup: Setup, prepared: Prepared) -> Step:
    from services.gpu.data import held_out_loss

    hp = spec.hyperparameters
    loaded = load_trainable_model(spec, setup.info, setup.device, setup.use_unsloth)
    model, precision = loaded.model, loaded.precision
    yield log(
        f"Model loaded: {setup.info.display_name} ({precision.device}, {precision.dtype_name})"
        f"{' 4-bit' if is_prequantized_4bit(spec.base_model) else ''}, {loaded.training_path} path"
        f"{', already warm' if loaded.warm else ''}"
    )
    trainable, total_params = model.get_nb_trainable_parameters()
    eval_before = None
    eval_examples = prepared.eval_examples
    if eval_examples:
        with model.disable_adapter():  # the base model alone
            eval_before = held_out_loss(model, eval_examples)
        yield log(f"Held-out loss before training (base model): {eval_before:.4f} on {len(eval_examples)} examples")
    yield log(
        f"LoRA configured (r={hp.lora_r}, alpha={hp.lora_alpha}, trainable: {_count(trainable)} params, "
        f"{100 * trainable / max(total_params, 1):.2f}% of {_count(total_params)})"
    )
    return Model(loaded, trainable, eval_before)


# --- 5. fit --------------------------------------------------------------------------------------------------


@dataclass
class Fitted:
    trainer: Any
    history: list[Payload]
    training_time: float
    best: BestWeights


def _sft_config(spec: TrainingSpec, trainable: TrainableModel, output_dir: Path, pad_multiple: int | None) -> Any:
    from trl import SFTConfig  # type: ignore[attr-defined]

    hp, precision = spec.hyperparameters, trainable.precision
    trl_checkpointing = precision.gradient_checkpointing and trainable.training_path != "unsloth"
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps if hp.max_steps is not None else -1,
        warmup_steps=hp.warmup_ratio,  # a float < 1 is a ratio of the total steps
        lr_scheduler_type=hp.lr_scheduler,
        neftune_noise_alpha=hp.neftune_noise_alpha,
        logging_steps=1,
        # The watchdog (callbacks.py) must see a NaN/inf loss: by default it is replaced by the window's mean.
        logging_nan_inf_filter=False,
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


def _stream(
    trainer: Any, resume: Checkpoint | None, events: queue.Queue[Payload], stop: threading.Event, job_id: str
) -> Step:
    """`trainer.train()` on a thread; its payloads yielded as they come. Closing the generator sets
    `stop` (the callback ends training after the current step) and waits for the thread.

    Returns the exception the training raised, or None.
    """
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
        except BaseException as exc:  # handed to the generator's thread
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run, name=f"trainer-{job_id}", daemon=True)
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
    return failure[0] if failure else None


def _fit(spec: TrainingSpec, prepared: Prepared, model: Model) -> Step:
    hp, trainable = spec.hyperparameters, model.trainable
    # Checkpoints (model, optimizer, scheduler, RNG and step) go to the adapter store, this attempt's
    # directory of the job's, so another worker can resume; without a checkpoint dir nothing is kept.
    resume: Checkpoint | None = None
    if spec.checkpoint_dir:
        resume = latest_checkpoint(spec.checkpoint_dir)
        staging = attempt_dir(spec.checkpoint_dir, spec.attempt)
        staging.mkdir(parents=True, exist_ok=True)
    else:
        staging = Path(tempfile.mkdtemp(prefix=f"fastbrain-trainer-{spec.job_id}-"))
        STAGING_DIRS.add(staging)
    if resume is not None:
        yield log(f"Resuming from checkpoint at step {resume.step} (saved by attempt {resume.attempt})")
    pad_multiple = CUDA_PAD_MULTIPLE if trainable.precision.device.startswith("cuda") else None  # CPU: no set-up
    events: queue.Queue[Payload] = queue.Queue()
    stop = threading.Event()
    history: list[Payload] = []
    best = BestWeights()
    dataset = prepared.dataset
    try:
        config = _sft_config(spec, trainable, staging, pad_multiple)
        trainer_class, train_data, collator = sft_trainer_class(), dataset, None
        # Several examples per row, each attending only to itself (services/gpu/packing.py). Unset means
        # "when it pays": a small skill has few optimizer steps already and packing would cut them further.
        pack = hp.packing if hp.packing is not None else len(dataset) >= SMALL_SKILL_EXAMPLES
        if hp.packing is None and not pack:
            yield log(f"Packing off: {len(dataset)} examples (under {SMALL_SKILL_EXAMPLES}) train one per row")
        if pack:
            from services.gpu import packing

            packed = packing.pack_for_training(
                dataset, hp.max_seq_length, prepared.tokenizer.pad_token_id, trainer_class, pad_multiple
            )
            trainer_class, train_data, collator = packed.trainer_class, packed.dataset, packed.collator
            yield log(packed.message(hp.max_seq_length))
        trainer = trainer_class(
            model=trainable.model,
            args=config,
            train_dataset=train_data,
            data_collator=collator,
            processing_class=prepared.tokenizer,
            # The watchdog first: a diverged step raises before its progress event (a NaN has no place in
            # the JSONB event log) and, as logging comes before saving in HF's step, before its checkpoint.
            callbacks=[
                make_watchdog_callback(events),
                make_progress_callback(events, stop, history, prepared.eval_examples, best, hp.early_stopping_patience),
            ],
        )
        trainer.fault_retry = spec.retry
        started = time.perf_counter()
        failure = yield from _stream(trainer, resume, events, stop, spec.job_id)
    finally:
        if not spec.checkpoint_dir:
            shutil.rmtree(staging, ignore_errors=True)  # TRL's output_dir: nothing is saved there
            STAGING_DIRS.discard(staging)
    if isinstance(failure, TrainingDiverged) and spec.checkpoint_dir:
        # The loss of step N is measured on the weights of step N - 1: checkpoints from N - 1 on hold the
        # weights that diverged, and resuming from one would replay the same step. Drop them, so the
        # next try resumes from before the bad update (with a lower learning rate).
        dropped = discard_from(spec.checkpoint_dir, failure.step - 1)
        good = latest_checkpoint(spec.checkpoint_dir)
        failure.details["last_good_step"] = good.step if good else None
        if dropped:
            yield log(
                f"Removed the checkpoints from step {failure.step - 1} on (steps {', '.join(map(str, dropped))}): "
                f"the next try resumes from {f'step {good.step}' if good else 'the start'}",
                level="warning",
            )
    if failure is not None:
        raise failure
    training_time = time.perf_counter() - started
    if stop.is_set():
        raise JobCancelled("Training was stopped before the end")
    return Fitted(trainer, history, training_time, best)


# --- 6. save -------------------------------------------------------------------------------------------------


def _save(spec: TrainingSpec, setup: Setup, prepared: Prepared, model: Model, fitted: Fitted) -> Step:
    from services.gpu import data

    hp, trainer, history, training_time = spec.hyperparameters, fitted.trainer, fitted.history, fitted.training_time
    eval_examples, eval_before = prepared.eval_examples, model.eval_before
    precision, training_path = model.trainable.precision, model.trainable.training_path
    output_dir = Path(spec.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    best, final_step = fitted.best, trainer.state.global_step
    # The schedule measures the last step; a run resumed at its very end did not.
    if eval_examples and best.last_step != final_step:
        best.offer(trainer.model, final_step, data.held_out_loss(trainer.model, eval_examples))
    # Keep the best adapter, not the last (`best.py`): the saved weights are never worse than the best measured.
    restored = best.restore(trainer.model)
    kept = best.message(restored)
    if kept:
        yield log(kept)
    kept_step = best.best_step if restored else best.last_step
    eval_after = (best.best_loss if restored else best.last_loss) if eval_examples else None
    # The catalog id, not this machine's cache path: the adapter must load on either backend.
    for peft_config in trainer.model.peft_config.values():
        peft_config.base_model_name_or_path = spec.base_model
    trainer.model.save_pretrained(output_dir, save_embedding_layers=False)
    (output_dir / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub, not ours

    losses = [p["loss"] for p in history if p.get("loss") is not None]
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
    evaluation = yield from _side_by_side(spec, prepared, trainer.model, training_path, kept_step)
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
        "examples": len(prepared.dataset),
        "trainable_parameters": model.trainable_parameters,
        "eval_examples": len(eval_examples),
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "improvement_pct": improvement_pct,
        "eval_loss_history": [{"step": p["step"], "eval_loss": p["eval_loss"]} for p in history if "eval_loss" in p],
        "best_step": kept_step,
        "best_eval_loss": eval_after,
        "last_eval_loss": best.last_loss,
        "restored_best": restored,
    }
    metadata_doc: dict[str, Any] = {
        "job_id": spec.job_id,
        "skill_id": spec.skill_id,
        "attempt": spec.attempt,
        "base_model": spec.base_model,
        "base_model_source": setup.info.source,
        "config": hp.model_dump(mode="json"),
        "lora_target_modules": LORA_TARGET_MODULES,
        "dataset_sha256": data.dataset_sha256(spec.system_prompt, spec.conversations),
        "dataset_examples": len(spec.conversations),
        "chat_template_sha256": prepared.chat.template_sha256,
        "metrics": metrics,
        "evaluation": evaluation,
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
        "peak_gpu_memory_gb": gpu_memory_gb(),
        "eval_examples": len(eval_examples),
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "improvement_pct": improvement_pct,
        "best_step": kept_step,
        "best_eval_loss": eval_after,
        "last_eval_loss": best.last_loss,
        "restored_best": restored,
        "evaluation": evaluation,
    }


def _side_by_side(spec: TrainingSpec, prepared: Prepared, model: Any, training_path: str, step: int | None) -> Step:
    """Held-out prompts answered by the base model and the adapter (`evaluation.py`), or None without a
    held-out split. A failure here never fails the run: the adapter is saved already; it is logged."""
    from services.gpu.training.evaluation import side_by_side

    if not prepared.eval_conversations:
        return None
    try:
        evaluation = side_by_side(
            model,
            prepared.tokenizer,
            prepared.chat,
            spec.system_prompt,
            prepared.eval_conversations,
            step=step,
            training_path=training_path,
        )
    except Exception as exc:  # a side-by-side is worth a warning, not the trained adapter
        yield log(f"Could not generate the side-by-side answers: {type(exc).__name__}: {exc}", level="warning")
        return None
    count = len(evaluation["samples"])
    yield log(
        f"Answered {count} held-out prompt{'s' if count != 1 else ''} with the base model and the adapter "
        f"(greedy, up to {evaluation['max_new_tokens']} tokens) in {evaluation['seconds']:.1f}s"
    )
    return evaluation


def train(spec: TrainingSpec, device: str | None = None) -> Generator[Payload, None, None]:
    """Fine-tune `spec.base_model` on the skill and save the adapter to `spec.output_dir`.

    Yields `log` and `progress` payloads as they happen, then one `complete`. Raises on
    failure (the caller turns it into an `error` payload with `shared.errors.describe`).
    Closing the generator early stops training after the current step.
    """
    setup = _set_up(spec, device)
    yield from _prepare_base_model(spec, setup)
    prepared: Prepared = yield from _prepare_data(spec)
    model: Model = yield from _prepare_model(spec, setup, prepared)
    fitted: Fitted = yield from _fit(spec, prepared, model)
    yield from _save(spec, setup, prepared, model, fitted)
