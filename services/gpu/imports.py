"""One safe first import of the ML stack for code that runs in worker threads.

transformers resolves its public names lazily, and that first resolution is not
thread-safe: two threads asking at once (a data report and a test chat, say) get
`ImportError: cannot import name 'AutoTokenizer'` in one of them. Entry points
that run in threads call `ensure_ml_stack()` first; after the first call it is a
flag check.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_ready = False
# Every transformers name the threaded paths (reports, the inference engine) use.
NAMES = (
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoTokenizer",
    "PreTrainedTokenizerBase",
    "LogitsProcessorList",
    "RepetitionPenaltyLogitsProcessor",
    "TemperatureLogitsWarper",
    "TopPLogitsWarper",
)


def ensure_ml_stack() -> None:
    global _ready
    if _ready:
        return
    with _lock:
        if _ready:
            return
        import peft  # noqa: F401  (imports transformers' model code too)
        import transformers

        for name in NAMES:
            getattr(transformers, name)
        _ready = True
