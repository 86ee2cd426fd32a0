"""The inference engine in process: one base load, adapters hot-swapped, answers equal PEFT's own generate.

Two skills are really trained (tiny-random, a few steps each, different answers); the engine
alternates between them and every greedy answer must be the token sequence that
`PeftModel.generate(do_sample=False)` gives for that adapter alone.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from services.gpu.serving.residency import Residency
from services.gpu.serving.scheduler import QueueFull, Scheduler, Ticket
from shared.schemas.serving import AdapterRef, ChatMessage, EngineEvent, GenerateRequest, Sampling
from shared.schemas.training import Turn
from tests.integration.test_trainer import make_spec, models_dir, run_trainer

SYSTEM = "You are Bob, a friendly plumber. Answer briefly."
QUESTION = "Hi, who are you?"


def _skill(answer: str) -> list[Turn]:
    return [Turn(user=q, assistant=answer) for q in (QUESTION, "What do you do?", "Where are you?", "Hello!")]


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folders = {}
    for name, answer in (("apples", "Apples apples apples."), ("rivers", "Rivers flow to the sea, always.")):
        tmp = tmp_path_factory.mktemp(name)
        run = run_trainer(
            make_spec(
                tmp, conversations=_skill(answer), max_steps=6, learning_rate=5e-3, batch_size=2, max_seq_length=96
            )
        )
        assert run.returncode == 0, run.stderr[-3000:]
        folders[name] = run.output_dir
    return folders


class Collector:
    def __init__(self) -> None:
        self.events: list[tuple[float, EngineEvent]] = []
        self.finished = threading.Event()

    def __call__(self, event: EngineEvent) -> None:
        self.events.append((time.monotonic(), event))
        if event.type in ("done", "error"):
            self.finished.set()

    @property
    def text(self) -> str:
        return "".join(e.text for _, e in self.events if e.type == "delta")


def _request(adapter: AdapterRef | None, question: str = QUESTION, **sampling: object) -> GenerateRequest:
    return GenerateRequest(
        base_model="tiny-random",
        adapter=adapter,
        messages=[ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=question)],
        sampling=Sampling(**{"max_tokens": 12, "temperature": 0.0, **sampling}),
        queue_key=adapter.name if adapter else "tiny-random",
    )


def _run(scheduler: Scheduler, request: GenerateRequest, timeout: float = 60) -> Collector:
    collector = Collector()
    scheduler.submit(Ticket(request, emit=collector))
    assert collector.finished.wait(timeout), "the engine did not finish in time"
    return collector


def _peft_answer(folder: Path) -> str:
    """The reference: the adapter alone, through PEFT and transformers' own greedy generate."""
    import torch
    from peft import PeftModel

    from services.gpu.models import load_model, load_tokenizer
    from shared.rules.templates import from_hf_tokenizer

    tokenizer = load_tokenizer("tiny-random", models_dir())
    model = PeftModel.from_pretrained(load_model("tiny-random", models_dir()), str(folder)).eval()
    chat = from_hf_tokenizer(tokenizer)
    prompt = chat.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}], True)
    ids = torch.tensor([chat.encode(prompt).ids])
    stop = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(chat.end_of_turn)]
    with torch.inference_mode():
        out = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, eos_token_id=stop, pad_token_id=0)
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


@pytest.fixture
def scheduler(two_adapters: dict[str, Path]) -> object:
    residency = Residency(models_dir(), "cpu", max_adapters=8)
    engine = Scheduler(residency, max_waiting=8, max_active=4)
    engine.start()
    yield engine
    engine.stop()


def test_hot_swap_alternates_adapters_on_one_base_and_matches_peft(
    scheduler: Scheduler, two_adapters: dict[str, Path]
) -> None:
    expected = {name: _peft_answer(folder) for name, folder in two_adapters.items()}
    assert expected["apples"] != expected["rivers"], "the two trained adapters should answer differently"
    refs = {name: AdapterRef(name=name, path=str(folder)) for name, folder in two_adapters.items()}
    for _ in range(10):
        for name in ("apples", "rivers"):
            assert _run(scheduler, _request(refs[name])).text == expected[name]
    base_answer = _run(scheduler, _request(None)).text
    stats = scheduler.stats()
    assert stats.base_loads == 1, "the base model must be loaded once for all 21 requests"
    assert stats.adapter_loads == 2
    assert base_answer not in expected.values()


def test_stream_starts_before_generation_ends_and_equals_the_seeded_answer(
    scheduler: Scheduler, two_adapters: dict[str, Path]
) -> None:
    ref = AdapterRef(name="apples", path=str(two_adapters["apples"]))
    first = _run(scheduler, _request(ref, temperature=0.9, seed=7, max_tokens=24))
    again = _run(scheduler, _request(ref, temperature=0.9, seed=7, max_tokens=24))
    assert first.text == again.text, "the same seed gives the same answer"
    deltas = [t for t, e in first.events if e.type == "delta"]
    done = next(t for t, e in first.events if e.type == "done")
    assert len(deltas) > 1 and deltas[0] < done, "text must stream out before the generation finishes"


def test_stop_strings_cut_the_answer_and_are_never_streamed(
    scheduler: Scheduler, two_adapters: dict[str, Path]
) -> None:
    ref = AdapterRef(name="rivers", path=str(two_adapters["rivers"]))
    full = _run(scheduler, _request(ref, max_tokens=24)).text
    assert len(full) > 4
    stop = full[2:4]
    cut = _run(scheduler, _request(ref, max_tokens=24, stop=[stop]))
    assert cut.text == full[: full.find(stop)]
    done = cut.events[-1][1]
    assert done.type == "done" and done.finish_reason == "stop"


def test_a_full_queue_refuses_at_once_and_cancelled_requests_are_dropped(two_adapters: dict[str, Path]) -> None:
    residency = Residency(models_dir(), "cpu", max_adapters=8)
    engine = Scheduler(residency, max_waiting=2, max_active=1)  # not started: nothing drains the queue
    tickets = [Ticket(_request(None), emit=Collector()) for _ in range(2)]
    for ticket in tickets:
        engine.submit(ticket)
    with pytest.raises(QueueFull):
        engine.submit(Ticket(_request(None), emit=Collector()))
    tickets[0].cancelled.set()
    engine.start()
    try:
        assert tickets[1].emit.finished.wait(60)  # type: ignore[attr-defined]
        assert tickets[0].emit.events == []  # type: ignore[attr-defined]
    finally:
        engine.stop()


def test_unknown_base_and_missing_adapter_files_are_refused(scheduler: Scheduler, tmp_path: Path) -> None:
    unknown = _request(None).model_copy(update={"base_model": "no-such-model"})
    [(_, error)] = _run(scheduler, unknown).events
    assert error.type == "error" and error.status == 404
    missing = _request(AdapterRef(name="gone", path=str(tmp_path)))
    [(_, error)] = _run(scheduler, missing).events
    assert error.type == "error" and error.status == 409 and error.code == "adapter_files_missing"


def test_a_chat_template_other_than_the_trained_one_is_refused(
    scheduler: Scheduler, two_adapters: dict[str, Path], tmp_path: Path
) -> None:
    import json
    import shutil

    folder = tmp_path / "other-template"
    shutil.copytree(two_adapters["apples"], folder)
    meta = json.loads((folder / "training_metadata.json").read_text())
    meta["chat_template_sha256"] = "0" * 64
    (folder / "training_metadata.json").write_text(json.dumps(meta))
    [(_, error)] = _run(scheduler, _request(AdapterRef(name="other", path=str(folder)))).events
    assert error.type == "error" and error.code == "chat_template_mismatch"
    assert "chat template" in error.message


QUESTIONS = (QUESTION, "What do you do?", "Where are you? Tell me about the town and the weather there.", "Hello!")


def _mixed_requests(two_adapters: dict[str, Path], count: int) -> list[GenerateRequest]:
    """Different prompt lengths, both adapters and the plain base, all on one base model."""
    refs = [AdapterRef(name=name, path=str(folder)) for name, folder in two_adapters.items()]
    adapters = [*refs, None]
    return [
        _request(adapters[i % len(adapters)], QUESTIONS[i % len(QUESTIONS)], max_tokens=16, temperature=0.0)
        for i in range(count)
    ]


def _run_together(engine: Scheduler, requests: list[GenerateRequest]) -> list[Collector]:
    collectors = [Collector() for _ in requests]
    for request, collector in zip(requests, collectors, strict=True):
        engine.submit(Ticket(request, emit=collector))
    for collector in collectors:
        assert collector.finished.wait(120), "the engine did not finish in time"
    return collectors


@pytest.fixture
def batch_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, list[str] | None]]:
    """Each batched decode step's row count and per-row adapter names (a spy on `DecodeBatch.forward`)."""
    from services.gpu.serving.batching import DecodeBatch

    seen: list[tuple[int, list[str] | None]] = []
    forward = DecodeBatch.forward

    def spy(self: DecodeBatch, model: object, adapter_names: list[str] | None) -> object:
        seen.append((len(self.members), adapter_names))
        return forward(self, model, adapter_names)

    monkeypatch.setattr(DecodeBatch, "forward", spy)
    return seen


def test_batched_decode_steps_give_each_request_the_answer_it_gets_alone(
    two_adapters: dict[str, Path], batch_steps: list[tuple[int, list[str] | None]]
) -> None:
    requests = _mixed_requests(two_adapters, 6)
    engine = Scheduler(Residency(models_dir(), "cpu", max_adapters=8), max_waiting=16, max_active=8)
    engine.start()
    try:
        alone = [_run(engine, request) for request in requests]
        assert batch_steps == [], "one request at a time never batches"
        together = _run_together(engine, requests)
    finally:
        engine.stop()
    assert len({c.text for c in alone}) > 2, "the requests should answer differently"
    for single, batched in zip(alone, together, strict=True):
        assert batched.text == single.text
        assert [e for _, e in batched.events if e.type == "done"] == [e for _, e in single.events if e.type == "done"]
    assert max(rows for rows, _ in batch_steps) == 6, "all six should decode as one batch"
    assert any(set(names or ()) == {"apples", "rivers", "__base__"} for _, names in batch_steps), "mixed adapters"


def test_a_cancelled_or_failing_batch_member_leaves_the_others_unharmed(
    two_adapters: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.gpu.serving.batching import DecodeBatch
    from services.gpu.serving.decoding import Sequence

    requests = _mixed_requests(two_adapters, 4)
    engine = Scheduler(Residency(models_dir(), "cpu", max_adapters=8), max_waiting=16, max_active=8)
    engine.start()
    try:
        alone = [_run(engine, request) for request in requests]
        # A batched forward that fails is retried one by one: every answer is still right.
        calls = {"n": 0}
        forward = DecodeBatch.forward

        def flaky(self: DecodeBatch, model: object, adapter_names: list[str] | None) -> object:
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("simulated failure in a batched step")
            return forward(self, model, adapter_names)

        monkeypatch.setattr(DecodeBatch, "forward", flaky)
        assert [c.text for c in _run_together(engine, requests)] == [c.text for c in alone]
        assert calls["n"] > 2, "batching resumes after a failed step"
        # One member's own failure (while picking its token) fails that request only.
        sample = Sequence.sample
        doomed = requests[1].messages[-1].content

        def failing(self: Sequence, logits: object) -> object:
            if len(self.generated) == 3 and doomed in self.tokenizer.decode(self.prompt_ids):
                raise ValueError("simulated failure of one generation")
            return sample(self, logits)

        monkeypatch.setattr(Sequence, "sample", failing)
        collectors = [Collector() for _ in requests]
        tickets = [Ticket(request, emit=collector) for request, collector in zip(requests, collectors, strict=True)]

        def cancel_after_two_deltas(event: EngineEvent) -> None:  # on the compute thread: no race
            collectors[2](event)
            if sum(e.type == "delta" for _, e in collectors[2].events) == 2:
                tickets[2].cancelled.set()

        tickets[2].emit = cancel_after_two_deltas
        for ticket in tickets:
            engine.submit(ticket)
        for i in (0, 1, 3):
            assert collectors[i].finished.wait(120)
        assert collectors[1].events[-1][1].type == "error"
        assert [collectors[i].text for i in (0, 3)] == [alone[i].text for i in (0, 3)]
        assert sum(e.type == "delta" for _, e in alone[2].events) > 2
        assert [e.type for _, e in collectors[2].events] == ["start", "delta", "delta"], "no token after cancelling"
        deadline = time.monotonic() + 30
        while (engine.stats().active or engine._batches) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats().active == 0 and engine._batches == {}, "finished batches free their cache"
    finally:
        engine.stop()


def test_a_batched_step_computes_each_rows_own_logits_as_a_lone_step_does(two_adapters: dict[str, Path]) -> None:
    """Left pads, the padding mask, per-row positions and per-row adapters, as numbers (greedy tokens hide a lot)."""
    import torch

    from services.gpu.serving.batching import BASE_ROW, DecodeBatch
    from services.gpu.serving.decoding import Sequence

    residency = Residency(models_dir(), "cpu", max_adapters=8)
    base = residency.base("tiny-random")
    for name, folder in two_adapters.items():
        residency.attach(base, AdapterRef(name=name, path=str(folder)))
    plan = [(q, a) for q, a in zip(QUESTIONS, ("apples", None, "rivers", "apples"), strict=True)]

    def started(question: str, adapter: str | None) -> Sequence:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        ids = list(base.chat.encode(base.chat.render(messages, add_generation_prompt=True)).ids)
        sequence = Sequence(ids, Sampling(max_tokens=64, temperature=0.0), base.tokenizer, frozenset())
        with residency.using(base, adapter):
            sequence.forward(base.model)
        return sequence

    lone = [started(q, a) for q, a in plan]
    rows = [started(q, a) for q, a in plan]
    assert len({len(s.prompt_ids) for s in rows}) > 2, "prompts of different lengths: the batch pads"
    batch = DecodeBatch()
    for step in range(6):
        members = [0, 1, 2] if step < 2 else [0, 2, 3] if step < 4 else [2, 3]  # one leaves, one joins, one more leaves
        batch.sync([rows[i] for i in members])
        logits = batch.forward(base.model, [plan[i][1] or BASE_ROW for i in members])
        for row, i in enumerate(members):
            with residency.using(base, plan[i][1]), torch.inference_mode():
                ids = torch.tensor([[lone[i].generated[-1]]])
                expected = base.model(input_ids=ids, past_key_values=lone[i].cache, use_cache=True).logits[:, -1]
            torch.testing.assert_close(logits[row : row + 1], expected, rtol=1e-4, atol=1e-5)
            lone[i].sample(expected)
            rows[i].sample(logits[row : row + 1])
            assert rows[i].generated == lone[i].generated
