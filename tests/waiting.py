"""Waiting for a condition, with a deadline: what tests use instead of sleeping."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    predicate: Callable[[], T | Awaitable[T]], timeout: float, message: str, interval: float = 0.05
) -> T:
    """Poll `predicate` (sync or async) until it returns something truthy, and return that.

    Fails with `message` (and the last value seen) once `timeout` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (within {timeout:g}s; last: {value!r})")
        await asyncio.sleep(interval)
