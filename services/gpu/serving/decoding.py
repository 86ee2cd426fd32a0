"""One generation, a token at a time: its KV cache, sampling, stop handling and streamed text.

A hand-rolled loop instead of `model.generate` because the scheduler interleaves many
generations (each with its own adapter) one token at a time, alone or as rows of one
batched forward (`batching.py`), after which each still samples its own token here;
sampling uses transformers' own logits processors, so greedy output is the token sequence
`generate(do_sample=False)` gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.schemas.serving import FinishReason, Sampling

REPLACEMENT_CHAR = "\ufffd"  # a multi-byte character whose remaining bytes are still to come


def keeps_last_logits(model: Any) -> bool:
    """Whether the model's forward takes `logits_to_keep` (as `generate` passes it: 1)."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel forwards kwargs
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


@dataclass
class Step:
    text: str  # new text to send (may be empty)
    finish_reason: FinishReason | None = None


@dataclass
class Sequence:
    prompt_ids: list[int]
    sampling: Sampling
    tokenizer: Any
    stop_ids: frozenset[int]
    generated: list[int] = field(default_factory=list)
    cache: Any = None
    sent: int = 0  # characters of the answer already streamed
    finish_reason: FinishReason | None = None
    _generator: Any = None
    _processors: Any = None
    _ended_on_stop_token: bool = False

    def __post_init__(self) -> None:
        import torch
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )
        from transformers.cache_utils import DynamicCache

        self.cache = DynamicCache()
        processors: list[Any] = []
        if self.sampling.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(self.sampling.repetition_penalty))
        if self.sampling.temperature > 0:
            if self.sampling.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(self.sampling.temperature))
            if self.sampling.top_p < 1.0:
                processors.append(TopPLogitsWarper(self.sampling.top_p))
            self._generator = torch.Generator()
            if self.sampling.seed is not None:
                self._generator.manual_seed(self.sampling.seed)
            else:
                self._generator.seed()
        self._processors = LogitsProcessorList(processors)

    def forward(self, model: Any) -> Step:
        """Feed the prompt (first call) or the last token, pick the next token, and say what to stream."""
        import torch

        new = self.prompt_ids if not self.generated else self.generated[-1:]
        with torch.inference_mode():
            ids = torch.tensor([new], device=model.device)
            last_only = {"logits_to_keep": 1} if keeps_last_logits(model) else {}  # the prefill needs just one row
            logits = model(input_ids=ids, past_key_values=self.cache, use_cache=True, **last_only).logits[:, -1, :]
        return self.sample(logits)

    def sample(self, logits: Any) -> Step:
        """Pick the next token from its next-token logits ([1, vocab], from this forward or a batched one)."""
        import torch

        with torch.inference_mode():
            logits = logits.float()
            context = torch.tensor([self.prompt_ids + self.generated], device=logits.device)
            scores = self._processors(context, logits)
            if self._generator is None:
                token = int(scores.argmax(dim=-1))
            else:
                probs = torch.softmax(scores, dim=-1).cpu()
                token = int(torch.multinomial(probs, 1, generator=self._generator))
        return self._advance(token)

    def _advance(self, token: int) -> Step:
        if token in self.stop_ids:
            self._ended_on_stop_token = True
            return self._finish("stop", self._text())
        self.generated.append(token)
        text = self._text()
        for stop in self.sampling.stop:
            at = text.find(stop)
            if at >= 0:
                return self._finish("stop", text[:at])
        if len(self.generated) >= self.sampling.max_tokens:
            return self._finish("length", text)
        return Step(self._take(self._safe(text)))

    def _text(self) -> str:
        text: str = self.tokenizer.decode(self.generated, skip_special_tokens=True)
        return text

    def _safe(self, text: str) -> str:
        """What may be streamed now: not a half-decoded character, nor text that may turn out to start a stop string."""
        text = text.rstrip(REPLACEMENT_CHAR)
        held = 0
        for stop in self.sampling.stop:
            for length in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:length]):
                    held = max(held, length)
                    break
        return text[: len(text) - held]

    def _take(self, text: str) -> str:
        delta = text[self.sent :]
        self.sent = max(self.sent, len(text))
        return delta

    def _finish(self, reason: FinishReason, text: str) -> Step:
        self.finish_reason = reason
        self.cache = None  # the KV cache is the memory a generation holds: free it at once
        return Step(self._take(text), reason)

    @property
    def completion_tokens(self) -> int:
        """Tokens the model produced, the end-of-turn token included (as OpenAI counts them)."""
        return len(self.generated) + int(self._ended_on_stop_token)
