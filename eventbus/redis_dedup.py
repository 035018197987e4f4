"""A de-duplication cache in Redis, shared by every worker of a service.

Each key holds either a lease (a random token, expiring after ``lease``
seconds) or the word ``done`` (expiring after ``ttl``). Claiming is one Lua
script, so two workers can never both get ``CLAIMED``; releasing deletes the
key only if it still holds our token, so a worker whose lease ran out cannot
remove someone else's lease or a done mark.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from eventbus.dedup import DEFAULT_LEASE, DEFAULT_TTL, Claim
from eventbus.errors import ConfigurationError

if TYPE_CHECKING:
    import redis

DEFAULT_PREFIX = "eventbus:dedup:"
DONE = b"done"

# KEYS[1] the key; ARGV[1] our token, ARGV[2] the lease in ms.
# Returns 1 claimed, 2 done, 3 busy. Finding our own token counts as claimed,
# so a call retried after a lost reply does not lock us out.
_CLAIM = """
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if value == ARGV[1] then return 1 end
if value == 'done' then return 2 end
return 3
"""

# KEYS[1] the key; ARGV[1] our token. Deletes the lease only if it is ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_ANSWERS = {1: Claim.CLAIMED, 2: Claim.DONE, 3: Claim.BUSY}


class RedisDedupCache:
    """The :class:`~eventbus.dedup.DedupCache` protocol on Redis.

    ``client`` is a ``redis://`` / ``rediss://`` URL or a ``redis.Redis``
    client. Keys are ``prefix`` + the dispatcher's key (service, handler,
    message id). ``lease`` is how long a claim holds if its worker never
    settles it (make it longer than your slowest handler); ``ttl`` how long
    a success is remembered (7 days by default: longer than any redelivery).

    Claiming costs one round trip, marking done or releasing one more. When
    Redis cannot be reached, ``claim`` raises: the dispatcher then neither
    runs the handler nor acks the message, which comes back later.
    """

    def __init__(
        self,
        client: str | redis.Redis[bytes],
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: float = DEFAULT_TTL,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        if ttl <= 0 or lease <= 0:
            raise ConfigurationError(f"RedisDedupCache(ttl={ttl!r}, lease={lease!r}): both must be positive seconds")
        self.prefix = prefix
        self.ttl = ttl
        self.lease = lease
        self.redis = _connect(client) if isinstance(client, str) else client
        self._claim = self.redis.register_script(_CLAIM)
        self._release = self.redis.register_script(_RELEASE)
        # The token of each lease this thread holds: the dispatcher claims,
        # calls the handler and settles on one thread.
        self._held = threading.local()

    def _tokens(self) -> dict[str, str]:
        tokens: dict[str, str] | None = getattr(self._held, "tokens", None)
        if tokens is None:
            tokens = self._held.tokens = {}
        return tokens

    def claim(self, key: str) -> Claim:
        """Take the lease on ``key`` unless it is done or leased (one round trip)."""
        tokens = self._tokens()
        token = tokens.get(key) or os.urandom(12).hex()
        answer = _ANSWERS[int(self._claim(keys=[self.prefix + key], args=[token, _ms(self.lease)]))]
        if answer is Claim.CLAIMED:
            tokens[key] = token
        return answer

    def done(self, key: str) -> None:
        """Mark ``key`` done for the TTL, whoever holds the lease now."""
        self._tokens().pop(key, None)
        self.redis.set(self.prefix + key, DONE, px=_ms(self.ttl))

    def release(self, key: str) -> None:
        """Drop our lease on ``key``; a done mark or another worker's lease stays."""
        token = self._tokens().pop(key, None)
        if token is not None:
            self._release(keys=[self.prefix + key], args=[token])

    def close(self) -> None:
        """Close the connections (they reopen on next use)."""
        self.redis.connection_pool.disconnect()

    def __repr__(self) -> str:
        return f"<RedisDedupCache prefix={self.prefix!r} ttl={self.ttl:g}s lease={self.lease:g}s>"


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


def _connect(url: str) -> redis.Redis[bytes]:
    try:
        from eventbus.backends.redis import connect
    except ImportError as exc:
        raise ConfigurationError("RedisDedupCache needs the redis package; install eventbus[redis]") from exc
    return connect(url)
