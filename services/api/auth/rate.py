"""Per-key limits kept in Redis, so they hold across API processes.

- Requests per minute: the `limits` library's sliding-window counter (two Redis
  counters per key and window, a few bytes, atomic), a 429 with `Retry-After` past it.
- Open WebSockets: a sorted set per key of socket ids scored by when their claim
  lapses. A live socket renews its claim (`WsSlot.renew`); one whose API process died
  stops renewing and falls out after `SLOT_TTL_SECONDS`, so a crash never leaks slots.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from services.api.errors import TooManyRequests
from shared.db.keys import Principal

if TYPE_CHECKING:
    from services.api.deps import AppState

SLOT_TTL_SECONDS = 60.0
RENEW_SECONDS = 20.0


def create_limiter(redis_url: str) -> SlidingWindowCounterRateLimiter:
    uri = "async+" + redis_url if not redis_url.startswith("async+") else redis_url
    storage = RedisStorage(uri, implementation="redispy", key_prefix="fastbrain:rate")
    return SlidingWindowCounterRateLimiter(storage)


async def check_request(state: AppState, principal: Principal) -> None:
    per_minute = state.settings.requests_per_minute_per_key
    item = RateLimitItemPerMinute(per_minute)
    key = str(principal.key_id)
    if await state.limiter.hit(item, key):
        return
    stats = await state.limiter.get_window_stats(item, key)
    retry_after = max(1, math.ceil(stats.reset_time - time.time()))
    raise TooManyRequests(
        f"This key made more than {per_minute} requests in a minute; try again in {retry_after} s.",
        details={"limit_per_minute": per_minute, "retry_after_seconds": retry_after},
        suggestions=["Slow down, or raise FASTBRAIN_REQUESTS_PER_MINUTE_PER_KEY."],
        code="rate_limited",
        headers={"Retry-After": str(retry_after)},
    )


def _slots_key(principal: Principal) -> str:
    return f"fastbrain:ws-slots:{principal.key_id}"


@dataclass
class WsSlot:
    state: AppState
    principal: Principal
    member: str

    async def renew(self) -> None:
        key = _slots_key(self.principal)
        async with self.state.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {self.member: time.time() + SLOT_TTL_SECONDS})
            pipe.expire(key, int(SLOT_TTL_SECONDS) * 2)
            await pipe.execute()

    async def release(self) -> None:
        await self.state.redis.zrem(_slots_key(self.principal), self.member)


async def claim_ws_slot(state: AppState, principal: Principal) -> WsSlot:
    """Claim one of the key's WebSocket slots, or raise 429 (before the socket is accepted)."""
    limit = state.settings.websockets_per_key
    key = _slots_key(principal)
    now = time.time()
    member = uuid.uuid4().hex
    async with state.redis.pipeline(transaction=True) as pipe:
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zadd(key, {member: now + SLOT_TTL_SECONDS})
        pipe.zcard(key)
        pipe.expire(key, int(SLOT_TTL_SECONDS) * 2)
        _, _, count, _ = await pipe.execute()
    slot = WsSlot(state, principal, member)
    if count > limit:
        await slot.release()
        raise TooManyRequests(
            f"This key already has {limit} open WebSockets; close one first.",
            details={"limit": limit},
            suggestions=["Close streams you no longer watch, or raise FASTBRAIN_WEBSOCKETS_PER_KEY."],
            code="too_many_websockets",
            headers={"Retry-After": "5"},
        )
    return slot
