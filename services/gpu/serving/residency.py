"""Which models the engine holds: each base model once, and up to N adapters on it (LRU).

Adapters are attached to the one loaded base with PEFT's multi-adapter API
(`load_adapter` / `set_adapter` / `delete_adapter`): switching skills per request costs
flag flips on the LoRA layers, not a reload. Everything here runs on the scheduler's one
thread, so there is no locking.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structlog import get_logger

from shared.rules.templates import ChatTokenizer, from_hf_tokenizer
from shared.schemas.serving import AdapterRef

log = get_logger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
METADATA = "training_metadata.json"


class EngineError(Exception):
    """A request the engine refuses, with the HTTP status the API passes on."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Base:
    """One loaded base model, the adapters attached to it and its chat template."""

    model_id: str
    model: Any  # a PreTrainedModel, or the PeftModel wrapping it once an adapter is attached
    tokenizer: Any
    chat: ChatTokenizer
    stop_ids: frozenset[int]
    adapters: OrderedDict[str, float] = field(default_factory=OrderedDict)  # name -> weights mtime, LRU order

    @property
    def has_peft(self) -> bool:
        return bool(self.adapters) or hasattr(self.model, "peft_config")


@dataclass
class Counters:
    base_loads: int = 0
    adapter_loads: int = 0
    adapter_evictions: int = 0


class Residency:
    def __init__(
        self, models_dir: Path, device: str | None, max_adapters: int, adapters_root: Path | None = None
    ) -> None:
        self.models_dir = models_dir
        self.device = device
        self.max_adapters = max_adapters
        self.adapters_root = adapters_root.resolve() if adapters_root else None
        self.bases: dict[str, Base] = {}
        self.counters = Counters()

    # --- bases -----------------------------------------------------------------------------------------------

    def base(self, model_id: str) -> Base:
        found = self.bases.get(model_id)
        if found is not None:
            return found
        from services.gpu.catalog import get_model, require_loadable
        from services.gpu.models import load_model, load_tokenizer, precision_for, resolve_device
        from shared.errors import FastBrainError

        try:
            get_model(model_id)
            device = resolve_device(self.device)
            require_loadable(model_id, device)
        except (KeyError, FastBrainError) as exc:
            raise EngineError(404, "model_not_found", f"The engine cannot load base model {model_id!r}: {exc}") from exc
        started = time.monotonic()
        model = load_model(model_id, self.models_dir, device, precision_for(device).torch_dtype)
        model.eval()  # type: ignore[no-untyped-call]
        tokenizer = load_tokenizer(model_id, self.models_dir)
        chat = from_hf_tokenizer(tokenizer)
        stop_ids = {tokenizer.eos_token_id}
        if chat.end_of_turn:
            stop_ids.add(tokenizer.convert_tokens_to_ids(chat.end_of_turn))
        base = Base(model_id, model, tokenizer, chat, frozenset(i for i in stop_ids if isinstance(i, int)))
        self.bases[model_id] = base
        self.counters.base_loads += 1
        log.info("engine_base_loaded", base_model=model_id, seconds=round(time.monotonic() - started, 2))
        return base

    # --- adapters --------------------------------------------------------------------------------------------

    def attach(self, base: Base, ref: AdapterRef, in_use: set[str] | frozenset[str] = frozenset()) -> None:
        """Make `ref` resident on `base` (loading it, or reloading it if its files changed), most recent in LRU.

        The least recently used adapters make room, except those of generations still running (`in_use`):
        with all of them busy the engine holds one more than `max_adapters` for a while."""
        folder = self._checked_folder(ref)
        mtime = (folder / ADAPTER_WEIGHTS).stat().st_mtime
        if base.adapters.get(ref.name) == mtime:
            base.adapters.move_to_end(ref.name)
            return
        if ref.name in base.adapters:  # retrained in place: drop the stale weights first
            self._detach(base, ref.name)
        self._check_metadata(base, folder)
        idle = [name for name in base.adapters if name not in in_use]
        while len(base.adapters) >= self.max_adapters and idle:
            self._detach(base, idle.pop(0))
        self._load(base, ref.name, folder)
        base.adapters[ref.name] = mtime
        self.counters.adapter_loads += 1

    def evict(self, name: str) -> bool:
        """Drop adapter `name` wherever it is resident (it was deleted). True if it was."""
        for base in self.bases.values():
            if name in base.adapters:
                self._detach(base, name)
                return True
        return False

    def resident(self) -> dict[str, list[str]]:
        return {model_id: list(base.adapters) for model_id, base in self.bases.items()}

    @contextmanager
    def using(self, base: Base, adapter: str | None) -> Iterator[None]:
        """Run the forward passes inside with `adapter` active, or with every adapter off (the plain base)."""
        if adapter is None:
            with base.model.disable_adapter() if base.has_peft else nullcontext():
                yield
            return
        if base.model.active_adapter != adapter:
            base.model.set_adapter(adapter)
        base.adapters.move_to_end(adapter)
        yield

    def _checked_folder(self, ref: AdapterRef) -> Path:
        folder = Path(ref.path).resolve()
        if self.adapters_root is not None and not folder.is_relative_to(self.adapters_root):
            raise EngineError(
                403, "adapter_outside_store", f"Adapter {ref.name}: {folder} is not in the adapter store."
            )
        if not (folder / ADAPTER_WEIGHTS).is_file() or not (folder / ADAPTER_CONFIG).is_file():
            raise EngineError(
                409, "adapter_files_missing", f"Adapter {ref.name} has no files on the engine's storage ({folder})."
            )
        return folder

    def _check_metadata(self, base: Base, folder: Path) -> None:
        """The adapter was trained on this base with this chat template: otherwise its answers would be noise."""
        meta_path = folder / METADATA
        if not meta_path.is_file():
            return
        meta = json.loads(meta_path.read_text())
        trained_on = meta.get("base_model")
        if trained_on and trained_on != base.model_id:
            raise EngineError(
                409, "base_model_mismatch", f"{folder} was trained on {trained_on!r}, not {base.model_id!r}."
            )
        trained_hash = meta.get("chat_template_sha256")
        if trained_hash and trained_hash != base.chat.template_sha256:
            raise EngineError(
                409,
                "chat_template_mismatch",
                f"{folder} was trained with chat template sha256 {trained_hash[:12]}…, but the loaded tokenizer of "
                f"{base.model_id!r} has {base.chat.template_sha256[:12]}…: its prompts would not match training. "
                "Retrain the skill on this base model, or restore the tokenizer it was trained with.",
            )

    def _load(self, base: Base, name: str, folder: Path) -> None:
        from peft import PeftModel

        try:
            if base.has_peft:
                base.model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
            else:
                base.model = PeftModel.from_pretrained(base.model, str(folder), adapter_name=name, is_trainable=False)
        except Exception as exc:
            raise EngineError(409, "adapter_load_failed", f"Adapter {name} ({folder}) failed to load: {exc}") from exc
        base.model.eval()
        log.info("engine_adapter_loaded", base_model=base.model_id, adapter=name)

    def _detach(self, base: Base, name: str) -> None:
        base.adapters.pop(name, None)
        base.model.delete_adapter(name)
        self.counters.adapter_evictions += 1
        log.info("engine_adapter_evicted", base_model=base.model_id, adapter=name)
