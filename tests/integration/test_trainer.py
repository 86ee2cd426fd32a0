"""The trainer as the local backend runs it: a real subprocess, JSON lines on stdout, a real adapter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ErrorCategory
from shared.rules.split import eval_split
from shared.schemas.events import (
    CompletePayload,
    ErrorPayload,
    LogPayload,
    ProgressPayload,
    check_trainer_payload,
    parse_payload,
)
from shared.schemas.training import Hyperparameters, TrainingSpec, Turn

REPO_ROOT = Path(__file__).resolve().parents[2]

CONVERSATIONS = [
    Turn(user="Hi, who are you?", assistant="I'm Bob from Bob's Plumbing. How can I help?"),
    Turn(user="My kitchen sink is leaking.", assistant="First close the valve under the sink, then call us."),
    Turn(user="How much is a visit?", assistant="A visit is 80 dollars; parts are extra."),
    Turn(user="Can you come tomorrow?", assistant="Yes, tomorrow at 9 am works. What is your address?"),
    Turn(user="Thanks!", assistant="You're welcome. See you tomorrow!"),
]


def models_dir() -> Path:
    path = Path(os.environ.get("FASTBRAIN_TEST_MODELS_DIR") or REPO_ROOT / ".cache" / "test-models")
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Run:
    returncode: int
    payloads: list[Any]
    stderr: str
    output_dir: Path
    wall_seconds: float


def make_spec(
    tmp: Path, base_model: str = "tiny-random", conversations: list[Turn] | None = None, **hyperparameters: Any
) -> Path:
    spec = TrainingSpec(
        job_id="job-test",
        skill_id="skill-test",
        base_model=base_model,
        system_prompt="You are Bob, a friendly plumber. Answer briefly.",
        conversations=CONVERSATIONS if conversations is None else conversations,
        hyperparameters=Hyperparameters(**hyperparameters),
        output_dir=str(tmp / "adapter"),
        models_dir=str(models_dir()),
    )
    path = tmp / "spec.json"
    path.write_text(spec.model_dump_json())
    return path


def run_trainer(spec_path: Path, timeout: float = 600) -> Run:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "services.gpu.trainer", str(spec_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "FASTBRAIN_TRAIN_DEVICE": "cpu"},
    )
    wall = time.perf_counter() - started
    lines = proc.stdout.splitlines()
    assert all(line.strip() for line in lines), f"blank line on stdout: {proc.stdout!r}"
    payloads = [parse_payload(line) for line in lines]  # every stdout line is a valid payload
    for line in lines:  # and passes the worker's boundary check as it is (strict types, no coercion)
        data = json.loads(line)
        assert check_trainer_payload(data) is data, check_trainer_payload(data)["message"]
    output_dir = Path(json.loads(spec_path.read_text()).get("output_dir", spec_path.parent / "adapter"))
    return Run(proc.returncode, payloads, proc.stderr, output_dir, wall)


def progress_of(run: Run) -> list[ProgressPayload]:
    return [p for p in run.payloads if isinstance(p, ProgressPayload)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("tiny")
    spec = make_spec(tmp, max_steps=4, batch_size=2, gradient_accumulation_steps=1, max_seq_length=128)
    return run_trainer(spec)


def test_tiny_random_job_streams_progress_and_completes(tiny_run: Run) -> None:
    assert tiny_run.returncode == 0, tiny_run.stderr[-3000:]
    messages = [p.message for p in tiny_run.payloads if isinstance(p, LogPayload)]
    assert any(m.startswith("Loaded 5 training examples") for m in messages)
    assert any(m.startswith("Model loaded: ") and "(cpu, float32)" in m for m in messages)
    assert any(m.startswith("LoRA configured (r=16") for m in messages)
    assert any(m.startswith("Training started") for m in messages)

    progress = progress_of(tiny_run)
    assert [p.step for p in progress] == [1, 2, 3, 4]
    for p in progress:
        assert p.total_steps == 4
        assert p.loss is not None and p.loss > 0
        assert p.learning_rate is not None
        assert p.grad_norm is not None
        assert p.tokens_per_second is not None and p.tokens_per_second > 0
        assert p.eta_seconds is not None and p.eta_seconds >= 0
        assert p.gpu_memory_used_gb is None
        assert p.epoch > 0 and p.total_epochs >= 1
    assert progress[-1].progress == 100.0
    assert [p.progress for p in progress] == sorted(p.progress for p in progress)

    assert isinstance(tiny_run.payloads[-1], CompletePayload)
    complete = tiny_run.payloads[-1]
    assert complete.adapter_path == str(tiny_run.output_dir)
    assert complete.initial_loss == progress[0].loss
    assert complete.final_loss == progress[-1].loss
    assert complete.training_time_seconds is not None and complete.training_time_seconds > 0
    assert complete.model_dump()["steps"] == 4
    assert not any(isinstance(p, ErrorPayload) for p in tiny_run.payloads)


def test_tiny_random_adapter_files_and_metadata(tiny_run: Run) -> None:
    out = tiny_run.output_dir
    for name in ("adapter_model.safetensors", "adapter_config.json", "training_metadata.json"):
        assert (out / name).is_file(), name
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16
    assert set(adapter_config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    meta = json.loads((out / "training_metadata.json").read_text())
    assert meta["base_model"] == "tiny-random"
    assert meta["config"]["lora_r"] == 16 and meta["config"]["max_steps"] == 4
    assert len(meta["dataset_sha256"]) == 64
    assert len(meta["chat_template_sha256"]) == 64
    assert meta["seed"] == 42
    assert meta["device"] == "cpu"
    assert meta["created_at"]
    assert set(meta["library_versions"]) >= {"torch", "transformers", "peft", "trl"}
    metrics = meta["metrics"]
    assert metrics["steps"] == 4
    assert metrics["initial_loss"] == progress_of(tiny_run)[0].loss
    assert metrics["final_loss"] == progress_of(tiny_run)[-1].loss
    assert metrics["train_tokens"] > 0
    assert metrics["tokens_per_second"] > 0
    assert metrics["training_time_seconds"] > 0
    assert [h["step"] for h in metrics["loss_history"]] == [1, 2, 3, 4]


def _chat(base_model: str, adapter_dir: Path, system: str, prompt: str, max_tokens: int) -> str:
    """The adapter's greedy answer through the inference engine (services/gpu/serving), as the API serves it."""
    from services.gpu.serving.residency import Residency
    from services.gpu.serving.scheduler import Scheduler
    from shared.schemas.serving import AdapterRef, ChatMessage, GenerateRequest, Sampling

    engine = Scheduler(Residency(models_dir(), "cpu", max_adapters=1), max_waiting=1, max_active=1)
    engine.start()
    request = GenerateRequest(
        base_model=base_model,
        adapter=AdapterRef(name="trained", path=str(adapter_dir)),
        messages=[ChatMessage(role="system", content=system), ChatMessage(role="user", content=prompt)],
        sampling=Sampling(max_tokens=max_tokens, temperature=0),
        queue_key="trained",
    )
    try:
        events = list(engine.run(request))
    finally:
        engine.stop()
    assert events[-1].type == "done", events[-1]
    return "".join(e.text for e in events if e.type == "delta")


def test_tiny_random_adapter_loads_with_peft_and_generates(tiny_run: Run) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(models_dir() / "tiny-random")
    model = PeftModel.from_pretrained(base, tiny_run.output_dir)
    assert model.active_adapter == "default"
    answer = _chat("tiny-random", tiny_run.output_dir, "You are Bob.", "Hi!", 8)
    assert isinstance(answer, str)
    assert _chat("tiny-random", tiny_run.output_dir, "You are Bob.", "Hi!", 8) == answer  # greedy: deterministic


@pytest.mark.slow
def test_smollm2_trains_two_steps_and_chats(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        base_model="smollm2-135m-instruct",
        max_steps=2,
        batch_size=1,
        gradient_accumulation_steps=1,
        max_seq_length=64,
    )
    run = run_trainer(spec)
    assert run.returncode == 0, run.stderr[-3000:]
    progress = progress_of(run)
    assert [p.step for p in progress] == [1, 2]
    assert all(p.loss is not None and 0 < p.loss < 20 for p in progress)
    assert isinstance(run.payloads[-1], CompletePayload)
    assert (run.output_dir / "adapter_model.safetensors").is_file()

    answer = _chat(
        "smollm2-135m-instruct",
        run.output_dir,
        "You are Bob, a friendly plumber. Answer briefly.",
        "How much is a visit?",
        24,
    )
    assert isinstance(answer, str) and answer.strip()
    print(
        f"\nsmollm2: {progress[-1].elapsed_seconds / 2:.2f}s/step (batch 1, seq<=64); "  # type: ignore[attr-defined]
        f"job wall {run.wall_seconds:.1f}s; answer={answer!r}"
    )


def assert_error(run: Run, category: ErrorCategory) -> ErrorPayload:
    assert run.returncode == 1
    assert run.payloads, run.stderr[-2000:]
    last = run.payloads[-1]
    assert isinstance(last, ErrorPayload), last
    assert last.category == category.value, last
    assert last.user_message and last.suggestions and last.exception_type
    assert sum(isinstance(p, ErrorPayload) for p in run.payloads) == 1
    return last


def test_unknown_base_model_is_model_load_fail(tmp_path: Path) -> None:
    error = assert_error(run_trainer(make_spec(tmp_path, base_model="no-such-model")), ErrorCategory.MODEL_LOAD_FAIL)
    assert "tiny-random" in error.message  # names the allowed ids


def test_gpu_only_model_is_model_load_fail(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, base_model="unsloth/Llama-3.2-3B-Instruct-bnb-4bit")
    error = assert_error(run_trainer(spec), ErrorCategory.MODEL_LOAD_FAIL)
    assert "Modal" in error.message


def test_empty_conversations_is_data_format_error(tmp_path: Path) -> None:
    assert_error(run_trainer(make_spec(tmp_path, conversations=[])), ErrorCategory.DATA_FORMAT_ERROR)


def test_malformed_spec_is_data_format_error(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text('{"job_id": "x"}')
    assert_error(run_trainer(path), ErrorCategory.DATA_FORMAT_ERROR)


def test_sigterm_stops_training_promptly(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, max_steps=5000, batch_size=1, gradient_accumulation_steps=1, max_seq_length=64)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.gpu.trainer", str(spec)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "FASTBRAIN_TRAIN_DEVICE": "cpu"},
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if isinstance(parse_payload(line), ProgressPayload):
                break
        else:
            pytest.fail("no progress before exit")
        sent = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        rest = proc.stdout.read()
        code = proc.wait(timeout=30)
        assert time.perf_counter() - sent < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 128 + signal.SIGTERM
    last = parse_payload(rest.strip().splitlines()[-1])
    assert isinstance(last, ErrorPayload) and last.category == ErrorCategory.CANCELLED.value
    assert not (tmp_path / "adapter").exists()


TWELVE = [
    Turn(user=f"{question} (case {i})", assistant=f"{answer} Ticket {i}.")
    for i, (question, answer) in enumerate([(t.user, t.assistant) for t in CONVERSATIONS] * 3)
][:12]


def test_held_out_loss_before_during_and_after(tmp_path: Path) -> None:
    """12 examples: 3 held out (seed 42), measured on the base model, after every step (a run of 10 steps or
    fewer: about every 10% is every step), and the adapter kept is the best measured."""
    run = run_trainer(
        make_spec(tmp_path, conversations=TWELVE, max_steps=4, batch_size=2, gradient_accumulation_steps=1)
    )
    assert run.returncode == 0, run.stderr[-3000:]
    messages = [p.message for p in run.payloads if isinstance(p, LogPayload)]
    assert any(m.startswith("Chat template check passed: 12 examples") for m in messages)
    assert any(m.startswith("Held out 3 of 12 examples") for m in messages)
    assert any(m.startswith("Loaded 9 training examples") for m in messages)
    assert any(m.startswith("Held-out loss before training (base model)") for m in messages)
    measured = {p.step: p.eval_loss for p in progress_of(run) if p.eval_loss is not None}
    assert list(measured) == [1, 2, 3, 4]
    complete = run.payloads[-1]
    assert isinstance(complete, CompletePayload) and complete.eval_examples == 3
    assert complete.eval_loss_before is not None and complete.eval_loss_after is not None
    expected = round(100 * (complete.eval_loss_before - complete.eval_loss_after) / complete.eval_loss_before, 2)
    assert complete.improvement_pct == expected
    # The adapter holds the weights of the step with the lowest held-out loss.
    assert complete.eval_loss_after == min(measured.values()) == complete.best_eval_loss
    assert complete.best_step == min(measured, key=lambda step: (measured[step], step != 4))
    assert complete.last_eval_loss == measured[4]
    assert complete.restored_best == (measured[4] > min(measured.values()))
    assert any(m.startswith("Kept the weights of ") for m in messages)
    metadata = json.loads((tmp_path / "adapter" / "training_metadata.json").read_text())
    metrics = metadata["metrics"]
    assert metrics["eval_loss_before"] == complete.eval_loss_before and metrics["eval_examples"] == 3
    assert metrics["examples"] == 9 and len(metrics["eval_loss_history"]) == 4
    assert metrics["best_step"] == complete.best_step and metrics["best_eval_loss"] == complete.best_eval_loss

    # Side by side: each held-out prompt with its reference answer, the base model's and the adapter's.
    evaluation = complete.evaluation
    assert evaluation is not None and metadata["evaluation"] == evaluation.model_dump()
    held_out = [TWELVE[i] for i in eval_split(12, 42)[1]]
    assert [(s.prompt, s.reference) for s in evaluation.samples] == [(t.user, t.assistant) for t in held_out]
    assert all(isinstance(s.base, str) and isinstance(s.adapter, str) for s in evaluation.samples)
    assert evaluation.max_new_tokens == 48 and evaluation.step == complete.best_step and evaluation.seconds > 0
    assert any(m.startswith("Answered 3 held-out prompts with the base model and the adapter") for m in messages)
    print(f"\ntiny-random: side-by-side of 3 prompts took {evaluation.seconds:.2f}s")


def test_no_eval_split_under_ten_examples(tiny_run: Run) -> None:
    messages = [p.message for p in tiny_run.payloads if isinstance(p, LogPayload)]
    assert any(m.startswith("No evaluation split: 5 examples") for m in messages)
    complete = tiny_run.payloads[-1]
    assert isinstance(complete, CompletePayload) and complete.eval_examples == 0
    assert complete.eval_loss_before is None and complete.improvement_pct is None
    assert complete.evaluation is None and complete.best_step is None


def test_answer_cut_by_max_seq_length_is_refused_before_training(tmp_path: Path) -> None:
    long = Turn(user="Tell me everything.", assistant=" ".join(["Close the valve, then call us."] * 12))
    run = run_trainer(make_spec(tmp_path, conversations=[*CONVERSATIONS, long], max_seq_length=64, max_steps=2))
    error = assert_error(run, ErrorCategory.DATA_FORMAT_ERROR)
    assert "chat template check failed" in error.message and "cut by max_seq_length" in error.message
    assert "1 of 6 examples (6)" in error.message
    assert not any(isinstance(p, ProgressPayload) for p in run.payloads), "refused before any step"


def _with(spec_path: Path, **fields: Any) -> Path:
    spec = TrainingSpec.model_validate_json(spec_path.read_text()).model_copy(update=fields)
    spec_path.write_text(spec.model_dump_json())
    return spec_path


def test_a_new_attempt_resumes_from_the_jobs_newest_complete_checkpoint(tmp_path: Path) -> None:
    """Attempt 1 saves under <checkpoint_dir>/a1/ and is killed; attempt 2 resumes from its newest complete
    checkpoint (one cut short while saving is skipped) and saves under a2/."""
    from services.gpu.training.checkpoints import latest_checkpoint

    root = tmp_path / "checkpoints"
    spec = _with(
        make_spec(tmp_path, max_steps=6, batch_size=1, gradient_accumulation_steps=1, max_seq_length=64),
        checkpoint_dir=str(root),
        checkpoint_every_steps=2,
        attempt=1,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.gpu.trainer", str(spec)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "FASTBRAIN_TRAIN_DEVICE": "cpu", "FASTBRAIN_TEST_STEP_DELAY_SECONDS": "1"},
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            payload = parse_payload(line)
            if isinstance(payload, ProgressPayload) and payload.step >= 3:  # checkpoint-2 is saved
                break
        else:
            pytest.fail("attempt 1 ended before step 3")
        proc.kill()  # the worker died (a SIGKILL leaves everything as it was)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (root / "a1" / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (root / "a1" / "checkpoint-4").exists()
    (root / "a1" / "checkpoint-5").mkdir()  # a save cut short: no trainer state

    run = run_trainer(_with(spec, attempt=2))
    assert run.returncode == 0, run.stderr[-3000:]
    messages = [p.message for p in run.payloads if isinstance(p, LogPayload)]
    assert "Resuming from checkpoint at step 2 (saved by attempt 1)" in messages
    assert any(m.startswith("Resumed at step 2/6") for m in messages)
    assert [p.step for p in progress_of(run)] == [3, 4, 5, 6]
    assert sorted(p.name for p in (root / "a2").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    newest = latest_checkpoint(root)
    assert newest is not None and (newest.step, newest.attempt) == (6, 2)


def test_drop_overlong_drops_the_cut_answers_and_trains_on_the_rest(tmp_path: Path) -> None:
    """What the OOM recovery's last step sets: the answer cut by max_seq_length is dropped, with a warning."""
    long = Turn(user="Tell me everything.", assistant=" ".join(["Close the valve, then call us."] * 12))
    spec = make_spec(tmp_path, conversations=[*CONVERSATIONS, long], max_seq_length=64, max_steps=2, drop_overlong=True)
    run = run_trainer(spec)
    assert run.returncode == 0, run.stderr[-3000:]
    warnings = [p.message for p in run.payloads if isinstance(p, LogPayload) and p.level == "warning"]
    assert any(m.startswith("Dropped 1 of 6 examples whose answer would be cut by max_seq_length=64") for m in warnings)
    messages = [p.message for p in run.payloads if isinstance(p, LogPayload)]
    assert any(m.startswith("Loaded 5 training examples") and "1 dropped: an answer cut" in m for m in messages)
    assert isinstance(run.payloads[-1], CompletePayload)

    only_long = _with(spec, conversations=[long, long])
    error = assert_error(run_trainer(only_long), ErrorCategory.DATA_FORMAT_ERROR)
    assert "cuts an answer of all 2 examples" in error.message and "none is left to train on" in error.message
