"""RedisDedupCache: the claim protocol on a real Redis, then the promises it keeps for a running bus."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
import redis

from eventbus import Bus, Claim, Envelope, RedisDedupCache, Registry, wait_until
from eventbus.dedup import DEFAULT_TTL

if TYPE_CHECKING:
    from conftest import PrivateRedis

pytestmark = pytest.mark.redis


@pytest.fixture
def make_cache(redis_url: str, prefix: str) -> Iterator[Callable[..., RedisDedupCache]]:
    """Caches on the shared server under the test's prefix; each one stands for a separate worker process."""
    made: list[RedisDedupCache] = []

    def make(**options: float) -> RedisDedupCache:
        cache = RedisDedupCache(redis_url, prefix=f"{prefix}dedup:", **options)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


# -- the protocol ---------------------------------------------------------------


def test_one_claim_wins_a_race(make_cache: Callable[..., RedisDedupCache]) -> None:
    caches = [make_cache() for _ in range(12)]
    start = threading.Barrier(len(caches))
    answers: list[Claim] = []

    def race(cache: RedisDedupCache) -> None:
        start.wait()
        answers.append(cache.claim("svc:handler:m-1"))

    threads = [threading.Thread(target=race, args=(cache,)) for cache in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.value for a in answers) == ["busy"] * 11 + ["claimed"]


def test_done_is_kept_for_the_ttl_then_forgotten(
    make_cache: Callable[..., RedisDedupCache], client: redis.Redis, prefix: str
) -> None:
    default = make_cache()
    assert default.ttl == DEFAULT_TTL == 7 * 24 * 3600
    assert default.claim("k-default") is Claim.CLAIMED
    default.done("k-default")
    assert DEFAULT_TTL * 1000 - 60_000 < client.pttl(f"{prefix}dedup:k-default") <= DEFAULT_TTL * 1000

    short = make_cache(ttl=0.5)
    assert short.claim("k") is Claim.CLAIMED
    short.done("k")
    assert 0 < client.pttl(f"{prefix}dedup:k") <= 500
    assert make_cache().claim("k") is Claim.DONE
    wait_until(lambda: short.claim("k") is Claim.CLAIMED, 3, interval=0.05, message="the done mark to expire")


def test_a_lease_expires(make_cache: Callable[..., RedisDedupCache], client: redis.Redis, prefix: str) -> None:
    crashed = make_cache(lease=0.4)
    other = make_cache()
    assert crashed.claim("k") is Claim.CLAIMED  # and never settled
    assert 0 < client.pttl(f"{prefix}dedup:k") <= 400
    assert other.claim("k") is Claim.BUSY
    wait_until(lambda: other.claim("k") is Claim.CLAIMED, 3, interval=0.05, message="the lease to expire")


def test_release_frees_the_key_for_a_retry(make_cache: Callable[..., RedisDedupCache]) -> None:
    first, second = make_cache(), make_cache()
    assert first.claim("k") is Claim.CLAIMED
    first.release("k")
    assert second.claim("k") is Claim.CLAIMED


def test_a_late_release_removes_neither_another_lease_nor_a_done_mark(
    make_cache: Callable[..., RedisDedupCache],
) -> None:
    slow, fast, third = make_cache(lease=0.2), make_cache(), make_cache()
    assert slow.claim("k") is Claim.CLAIMED
    wait_until(lambda: fast.claim("k") is Claim.CLAIMED, 3, interval=0.05, message="the slow lease to expire")
    slow.release("k")  # its lease is long gone: this must not free fast's lease
    assert third.claim("k") is Claim.BUSY
    fast.done("k")
    slow.release("k")
    assert third.claim("k") is Claim.DONE


def test_same_cache_on_two_threads_keeps_leases_apart(make_cache: Callable[..., RedisDedupCache]) -> None:
    cache = make_cache(lease=0.2)
    assert cache.claim("k") is Claim.CLAIMED
    other_thread: list[Claim] = []

    def claim_later() -> None:
        wait_until(lambda: cache.claim("k") is Claim.CLAIMED, 3, interval=0.05)
        other_thread.append(Claim.CLAIMED)

    thread = threading.Thread(target=claim_later)
    thread.start()
    thread.join()
    assert other_thread == [Claim.CLAIMED]
    cache.release("k")  # this thread's token is stale: the other thread's lease stays
    assert make_cache().claim("k") is Claim.BUSY


def test_a_repeated_claim_by_the_holder_is_claimed(make_cache: Callable[..., RedisDedupCache]) -> None:
    # redis-py may resend a claim whose reply was lost: the holder must not lock itself out.
    cache = make_cache()
    assert cache.claim("k") is Claim.CLAIMED
    assert cache.claim("k") is Claim.CLAIMED
    assert make_cache().claim("k") is Claim.BUSY


# -- with a running bus -------------------------------------------------------------


def _envelope(kinds: SimpleNamespace, order_id: str, message_id: str) -> Envelope:
    return Envelope(
        body=f'{{"order_id": "{order_id}"}}'.encode(), message_id=message_id, manifest=kinds.OrderPlaced.__name__
    )


def test_two_workers_racing_for_one_message_run_the_handler_once(
    make_bus: Callable[..., Bus],
    make_cache: Callable[..., RedisDedupCache],
    registry: Registry,
    kinds: SimpleNamespace,
    settled: Callable[[str], bool],
) -> None:
    runs: list[str] = []

    @registry.subscribe(kinds.OrderPlaced, backoff=0.2)
    def charge(event: object) -> None:
        runs.append(threading.current_thread().name)
        time.sleep(0.5)

    workers = [make_bus("billing", dedup=make_cache(), concurrency=1, prefetch=1).start() for _ in range(2)]
    duplicate = _envelope(kinds, "o-1", uuid.uuid4().hex)
    workers[0].backend.publish("orders", duplicate)  # the broker delivers it twice,
    workers[0].backend.publish("orders", duplicate)  # once to each worker
    wait_until(lambda: runs, 5, message="the handler to run")
    wait_until(lambda: settled("billing"), 10, message="both copies to be settled")
    assert len(runs) == 1
    assert workers[0].dead_letters() == []


def test_a_crashed_workers_lease_delays_the_message_until_it_expires(
    make_bus: Callable[..., Bus],
    make_cache: Callable[..., RedisDedupCache],
    registry: Registry,
    kinds: SimpleNamespace,
    settled: Callable[[str], bool],
) -> None:
    runs: list[float] = []

    @registry.subscribe(kinds.OrderPlaced, backoff=0.2)
    def charge(event: object) -> None:
        runs.append(time.monotonic())

    bus = make_bus("billing", dedup=make_cache()).start()
    message_id = uuid.uuid4().hex
    crashed = make_cache(lease=1.5)
    assert crashed.claim(f"billing:{bus.handlers[0].name}:{message_id}") is Claim.CLAIMED
    claimed_at = time.monotonic()  # ... and the worker died holding the lease
    bus.backend.publish("orders", _envelope(kinds, "o-1", message_id))
    wait_until(lambda: runs, 10, message="the handler to run once the lease expired")
    assert runs[0] - claimed_at >= 1.3
    wait_until(lambda: settled("billing"), 5)
    assert len(runs) == 1


def test_a_handler_that_succeeded_is_not_rerun_when_its_sibling_failed(
    make_bus: Callable[..., Bus],
    make_cache: Callable[..., RedisDedupCache],
    registry: Registry,
    kinds: SimpleNamespace,
    settled: Callable[[str], bool],
) -> None:
    charged: list[int] = []
    mailed: list[int] = []

    @registry.subscribe(kinds.OrderPlaced, backoff=0.1)
    def charge(event: object, ctx: object) -> None:
        charged.append(ctx.attempt)  # type: ignore[attr-defined]

    @registry.subscribe(kinds.OrderPlaced, backoff=0.1)
    def mail(event: object, ctx: object) -> None:
        mailed.append(ctx.attempt)  # type: ignore[attr-defined]
        if ctx.attempt == 1:  # type: ignore[attr-defined]
            raise ConnectionError("mail server down")

    bus = make_bus("shop", dedup=make_cache()).start()
    bus.publish(kinds.OrderPlaced("o-1"))
    wait_until(lambda: mailed == [1, 2], 10, message="the mail handler to be retried")
    wait_until(lambda: settled("shop"), 5)
    assert charged == [1]


def test_redis_down_means_retry_later_and_nothing_lost(
    private_redis: PrivateRedis,
    registry: Registry,
    kinds: SimpleNamespace,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="eventbus.dispatch")
    runs: list[str] = []

    @registry.subscribe(kinds.OrderPlaced, backoff=0.1)
    def charge(event: object) -> None:
        runs.append(event.order_id)  # type: ignore[attr-defined]

    cache = RedisDedupCache(private_redis.url, prefix=prefix)
    bus = Bus("billing", f"memory://{prefix}", registry=registry, dedup=cache).start()
    try:
        private_redis.stop()
        bus.publish(kinds.OrderPlaced("o-1"))

        def unavailable() -> int:
            return sum(
                "cache unavailable" in r.getMessage() and "retry later" in r.getMessage() for r in caplog.records
            )

        wait_until(lambda: unavailable() >= 2, 10, message="the bus to say it will retry later, twice")
        assert runs == []  # not run unchecked, and not acked either: it keeps coming back
        private_redis.start()
        wait_until(lambda: runs == ["o-1"], 10, message="the handler to run once Redis is back")
        broker = bus.backend.broker  # type: ignore[attr-defined]
        wait_until(lambda: broker.depth("billing") == 0, 5)
        assert runs == ["o-1"]
        assert bus.dead_letters() == []
    finally:
        bus.stop(timeout=5)
        cache.close()
