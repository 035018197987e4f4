"""What the Redis de-duplication cache costs per handler call.

Runs the same handler through the dispatcher (inside ``bus.testing()``, so
no broker is involved) without a cache, with the in-memory cache, and with
``RedisDedupCache`` on the Redis at $EVENTBUS_REDIS_URL (default
127.0.0.1:6379/0), and prints µs per handler call and Redis round trips per
handler call, side by side. Keys live under a unique prefix, deleted after.

    .venv/bin/python bench/redis_dedup.py [messages]
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from typing import Any

import redis
from attrs import frozen

from eventbus import Bus, MemoryDedupCache, RedisDedupCache, Registry
from eventbus.dedup import DedupCache

URL = os.environ.get("EVENTBUS_REDIS_URL", "redis://127.0.0.1:6379/0")


class CountingRedis(redis.Redis):
    """A client that counts the commands it sends (each one is a round trip here: no pipelines)."""

    calls = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.calls += 1
        return super().execute_command(*args, **options)


def best(make: Any, messages: int, handlers: int, repeat: int = 3) -> float:
    """The fastest of ``repeat`` runs (the machine may be busy with other work)."""
    return min(run(make(), messages, handlers) for _ in range(repeat))


def run(dedup: DedupCache | None, messages: int, handlers: int) -> float:
    """Seconds per handler call."""
    registry = Registry()

    @registry.message(topic="bench")
    @frozen
    class Tick:
        n: int

    for i in range(handlers):
        registry.subscribe(Tick)(_handler(i))
    bus = Bus("bench", "memory://", registry=registry, dedup=dedup)
    with bus.testing() as session:
        for n in range(50):  # warm up (loads the Lua scripts)
            bus.publish(Tick(-n))
        session.clear()
        start = time.perf_counter()
        for n in range(messages):
            bus.publish(Tick(n))
        elapsed = time.perf_counter() - start
        assert len(session.handled) == messages * handlers
    return elapsed / (messages * handlers)


def _handler(i: int) -> Any:
    def handle(event: Any) -> None:
        pass

    handle.__name__ = handle.__qualname__ = f"handle_{i}"
    return handle


def main() -> None:
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    client = CountingRedis.from_url(URL)
    prefix = f"eventbus-bench-{uuid.uuid4().hex[:8]}:"
    ping_start = time.perf_counter()
    for _ in range(500):
        client.ping()
    ping = (time.perf_counter() - ping_start) / 500
    try:
        print(f"Redis at {URL}: PING round trip {ping * 1e6:.0f} µs; {messages} messages per run")
        print(f"{'cache':<24}{'handlers/msg':>14}{'µs/handler call':>18}{'round trips/call':>18}{'overhead µs':>14}")
        run(None, messages, 1)  # warm up the interpreter and the dispatcher
        for handlers in (1, 2):
            base = best(lambda: None, messages, handlers)
            rows: list[tuple[str, float, float | None]] = [("none", base, None)]
            rows.append(("MemoryDedupCache", best(MemoryDedupCache, messages, handlers), None))
            client.calls = 0
            seconds = run(RedisDedupCache(client, prefix=prefix), messages, handlers)
            trips = (client.calls - 100 * handlers) / (messages * handlers)  # minus the warm-up's
            seconds = min(seconds, best(lambda: RedisDedupCache(client, prefix=prefix), messages, handlers, 2))
            rows.append(("RedisDedupCache", seconds, trips))
            for name, per_call, trips in rows:
                shown = "-" if trips is None else f"{trips:.2f}"
                overhead = (per_call - base) * 1e6
                print(f"{name:<24}{handlers:>14}{per_call * 1e6:>18.1f}{shown:>18}{overhead:>14.1f}")
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()


if __name__ == "__main__":
    main()
