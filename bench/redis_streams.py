"""Throughput of the Redis Streams backend, measured side by side in one run.

Publishing one by one (one XADD round trip each) against ``publish_many``
(one pipeline per batch), then consuming: a bus with 4 handler threads
drains a backlog, without and with ``RedisDedupCache``. Uses the Redis at
$EVENTBUS_REDIS_URL (default 127.0.0.1:6379/0) under a unique key prefix,
deleted afterwards.

    .venv/bin/python bench/redis_streams.py [messages]
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from typing import Any

import redis
from attrs import frozen

from eventbus import Bus, RedisDedupCache, Registry, wait_until

URL = os.environ.get("EVENTBUS_REDIS_URL", "redis://127.0.0.1:6379/0")


def main() -> None:
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    prefix = f"eventbus-bench-{uuid.uuid4().hex[:8]}:"
    url = f"{URL}?prefix={prefix}"
    registry = Registry()

    @registry.message(topic="bench")
    @frozen
    class Tick:
        n: int

    handled = [0]
    lock = threading.Lock()

    @registry.subscribe(Tick)
    def handle(event: Tick) -> None:
        with lock:
            handled[0] += 1

    publisher = Bus("bench-publisher", url, registry=registry)  # never started: it only publishes
    try:
        print(f"Redis at {URL}, {messages} small messages")
        start = time.perf_counter()
        for n in range(messages):
            publisher.publish(Tick(n))
        one_by_one = messages / (time.perf_counter() - start)
        start = time.perf_counter()
        for first in range(0, messages, 100):
            publisher.publish_many([Tick(n) for n in range(first, min(first + 100, messages))])
        batched = messages / (time.perf_counter() - start)
        print(f"publish one by one      {one_by_one:>9.0f} msg/s")
        print(f"publish_many (100)      {batched:>9.0f} msg/s   x{batched / one_by_one:.1f}")

        rates: dict[str, float] = {}
        for label, dedup in (("consume, no dedup", None), ("consume, RedisDedupCache", "redis")):
            cache = RedisDedupCache(URL, prefix=f"{prefix}dedup:") if dedup else None
            bus = Bus("bench", url, registry=registry, dedup=cache, concurrency=4)
            bus.provision()
            handled[0] = 0
            for first in range(0, messages, 100):
                publisher.publish_many([Tick(n) for n in range(first, min(first + 100, messages))])
            start = time.perf_counter()
            bus.start()
            wait_until(lambda: handled[0] >= messages, 120, interval=0.005)
            rates[label] = messages / (time.perf_counter() - start)
            bus.stop()
            base = rates["consume, no dedup"]
            print(f"{label:<24}{rates[label]:>9.0f} msg/s   x{rates[label] / base:.2f}")
    finally:
        client: Any = redis.Redis.from_url(URL)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        publisher.stop()


if __name__ == "__main__":
    main()
