"""How every part connects to Redis for arq: one setting, with retries that ride out a restart."""

from __future__ import annotations

from arq.connections import RedisSettings
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

# arq's worker loop has no handling of its own for a dropped connection: without these
# retries a Redis restart ends every worker process. About 30 s of retries in all.
REDIS_RETRIES = 15


def redis_settings(redis_url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(redis_url)
    settings.retry_on_error = [ConnectionError, TimeoutError, OSError]
    settings.retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), REDIS_RETRIES)
    return settings
