"""Per-tenant request rate limit: a token bucket kept in Redis, so every API replica shares it."""

from __future__ import annotations

import math
import time

import redis

from chinfix.contract import RedisKeys

# KEYS: the bucket. ARGV: refill rate (tokens per second), capacity, now.
# Returns 0 when a token was taken, else the seconds until one will be there.
_TAKE_TOKEN = """
local rate, capacity, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(bucket[1]) or capacity, tonumber(bucket[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
return tostring(wait)
"""


class RateLimiter:
    def __init__(self, connection: redis.Redis, keys: RedisKeys, per_second: float, burst: int) -> None:
        self.keys = keys
        self.per_second = per_second
        self.burst = burst
        self._take = connection.register_script(_TAKE_TOKEN)

    def retry_after(self, owner: str) -> int:
        """Take one request token from the tenant's bucket: 0 when there was one, else whole seconds to wait."""
        wait = float(self._take(keys=[self.keys.tenant_bucket(owner)], args=[self.per_second, self.burst, time.time()]))
        return math.ceil(wait) if wait > 0 else 0
