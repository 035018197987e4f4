"""Broker-side faults: the de-duplication cache restarting, an unreachable broker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from eventbus import Bus, PublishError, Registry
from tests.faults.harness import STATE_URL, Figures, Workers, settle, stop
from tests.private_redis import PrivateRedis


def test_dedup_cache_restart_under_load(tmp_path: Path, record: Callable[..., Figures]) -> None:
    """The cache's Redis goes away and comes back mid-run: nothing is acked unchecked, nothing lost."""
    cache = PrivateRedis(str(tmp_path))  # append-only, fsynced: done marks survive the restart
    cache.start()
    pool = Workers("redis", "", dedup_url=cache.url)
    pool.url = f"{STATE_URL}?prefix={pool.namespace}:q:&reclaim=2&block=0.2"
    total = 2000
    started = time.monotonic()
    try:
        pool.publish(total)
        proc = pool.start()
        pool.wait(lambda: pool.completed() >= total // 5, 60)
        cache.stop()
        down_at = pool.completed()
        time.sleep(1.5)  # the outage itself: workers must not ack anything meanwhile
        assert pool.completed() == down_at, "handlers completed while the cache was down"
        cache.start()
        restarted = time.monotonic()
        pool.wait(lambda: pool.completed() > down_at, 60)
        recover = time.monotonic() - restarted
        pool.wait(lambda: pool.completed() >= total, 120)
        settle(pool)
        assert stop(proc) == 0
        figures = record(
            pool.figures("dedup Redis restart", faults=1, recover_max=recover, seconds=time.monotonic() - started)
        )
    finally:
        cache.stop()
        pool.cleanup()
    assert figures.lost == 0
    assert figures.duplicates == 0


registry = Registry()


@registry.message(topic="unreachable")
@attrs.frozen
class Ping:
    n: int


UNREACHABLE = {
    "rabbitmq": "amqp://guest:secret@127.0.0.1:1/%2F",
    "redis": "redis://:secret@127.0.0.1:1/0",
    "sqs": "sqs://key:secret@?region=us-east-1&endpoint=http://127.0.0.1:1",
}


@pytest.mark.parametrize("backend", sorted(UNREACHABLE))
def test_publishing_to_an_unreachable_broker_fails_fast_and_clearly(
    backend: str, record: Callable[..., Figures]
) -> None:
    bus = Bus("lonely", UNREACHABLE[backend], registry=registry)
    started = time.monotonic()
    try:
        with pytest.raises(PublishError) as raised:
            bus.publish(Ping(1))
        elapsed = time.monotonic() - started
    finally:
        bus.stop(timeout=5)  # and its reconnecting stops too
    record(Figures(backend, "publish, broker unreachable", sent=1, lost=0, seconds=elapsed))
    assert elapsed < 15, f"publishing took {elapsed:.1f}s to fail"
    assert "127.0.0.1:1" in str(raised.value)
    assert "secret" not in str(raised.value)
