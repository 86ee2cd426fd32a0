"""Test hooks that make real failures happen on a CPU machine.

They exist so the recovery paths run end to end in tests; none is set in
production. Each produces the genuine exception the real failure raises:

- FASTBRAIN_TEST_MEMORY_BUDGET_TOKENS=N: a micro-batch with more than N tokens
  (padded batch x length) raises `torch.cuda.OutOfMemoryError`, as a GPU would.
- FASTBRAIN_TEST_NETWORK_FAILURES=N: the first N tries of a job (spec.retry < N)
  open a TCP connection to a closed local port, raising ConnectionRefusedError.
- FASTBRAIN_TEST_NAN_LOSS_AT_STEP=N: the loss of optimizer step N (1-based) is multiplied by NaN,
  so its gradients and the update are NaN too, as a real divergence; only on the first T tries of
  a job (spec.retry < T) with FASTBRAIN_TEST_NAN_LOSS_TRIES=T (default 1), so a test shows both a
  recovery (T=1) and a persistent failure (T large).
- FASTBRAIN_TEST_STEP_DELAY_SECONDS=S: sleep S after each optimizer step, so a
  test can act (cancel, kill a worker) in the middle of a short run.
- FASTBRAIN_TEST_LR_SCALE_LAST_STEPS=K (with FASTBRAIN_TEST_LR_SCALE=F, default -30): the
  learning rate of the last K optimizer steps is multiplied by F. A negative F makes those
  steps climb the loss instead of descending it, so the held-out loss of the last weights is
  worse than an earlier step's, as in a run that goes wrong at its end (the best-weights test).
  Only the update changes: the loss the watchdog sees for a step is measured before its own
  update, so the last step never looks diverged.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

MEMORY_BUDGET_ENV = "FASTBRAIN_TEST_MEMORY_BUDGET_TOKENS"
NETWORK_FAILURES_ENV = "FASTBRAIN_TEST_NETWORK_FAILURES"
STEP_DELAY_ENV = "FASTBRAIN_TEST_STEP_DELAY_SECONDS"
NAN_LOSS_AT_STEP_ENV = "FASTBRAIN_TEST_NAN_LOSS_AT_STEP"
NAN_LOSS_TRIES_ENV = "FASTBRAIN_TEST_NAN_LOSS_TRIES"
LR_SCALE_LAST_STEPS_ENV = "FASTBRAIN_TEST_LR_SCALE_LAST_STEPS"
LR_SCALE_ENV = "FASTBRAIN_TEST_LR_SCALE"


def _number(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


def check_memory_budget(input_ids: Any) -> None:
    budget = _number(MEMORY_BUDGET_ENV)
    if budget is None or input_ids.numel() <= budget:
        return
    import torch

    batch, length = input_ids.shape
    raise torch.cuda.OutOfMemoryError(
        f"CUDA out of memory. Tried to allocate memory for {batch}x{length}={input_ids.numel()} tokens "
        f"(test memory budget {MEMORY_BUDGET_ENV}={budget:g})"
    )


def maybe_fail_network(retry: int) -> None:
    failures = _number(NETWORK_FAILURES_ENV)
    if failures is None or retry >= failures:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on that port any more: a real "connection refused".
    socket.create_connection(("127.0.0.1", port), timeout=5).close()


def step_delay() -> None:
    delay = _number(STEP_DELAY_ENV)
    if delay:
        time.sleep(delay)


def poison_loss(loss: Any, step: int, retry: int) -> Any:
    """`loss` times NaN when `step` (the optimizer step being computed, 1-based) is the test's NaN step."""
    at = _number(NAN_LOSS_AT_STEP_ENV)
    tries = _number(NAN_LOSS_TRIES_ENV)
    if at is None or step != int(at) or retry >= (1 if tries is None else tries):
        return loss
    return loss * float("nan")


def scale_learning_rate(optimizer: Any, step: int, total_steps: int) -> None:
    """Multiply the rate of optimizer step `step` (1-based, about to run) by the test's factor when it is one
    of the last K steps. The schedule sets the rate again after each step, so the factor applies once."""
    last = _number(LR_SCALE_LAST_STEPS_ENV)
    if last is None or optimizer is None or step <= total_steps - int(last):
        return
    factor = _number(LR_SCALE_ENV) or -30.0
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
