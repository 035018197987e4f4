"""The Redis Streams backend against a real Redis: the same behaviours as the other backends, plus reclaim."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
import redis

from eventbus import Bus, ConfigurationError, Envelope, PublishError, Registry, subscribe, wait_until
from eventbus.backends import from_url
from eventbus.backends.redis import RedisBackend

if TYPE_CHECKING:
    from conftest import PrivateRedis

pytestmark = pytest.mark.redis


def _raw_take(client: redis.Redis, prefix: str, queue: str, topic: str = "orders") -> list[Any]:
    """A consumer that takes whatever is waiting for ``queue`` and dies without acknowledging it."""
    reply = client.xreadgroup(queue, "doomed-consumer", {f"{prefix}topic:{topic}": ">"}, count=100)
    return [entry_id for _, entries in reply for entry_id, _ in entries]


def test_from_url_picks_the_backend_and_reads_its_options(redis_url: str, prefix: str) -> None:
    backend = from_url(f"{redis_url}?prefix={prefix}&maxlen=500&reclaim=30&block=0.5&delivery_limit=3")
    assert isinstance(backend, RedisBackend)
    assert (backend.keys.prefix, backend.maxlen, backend.reclaim, backend.block, backend.delivery_limit) == (
        prefix,
        500,
        30.0,
        0.5,
        3,
    )
    assert isinstance(from_url("rediss://127.0.0.1:6390/0"), RedisBackend)


@pytest.mark.parametrize(
    "query",
    ["maxlen=lots", "reclaim=0", "block=-1", "delivery_limit=-2", "block=2&socket_timeout=2.5", "reclaim=3"],
)
def test_bad_url_options_say_what_is_wrong_without_the_password(query: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        from_url(f"redis://:hunter2@127.0.0.1:6379/0?{query}")
    assert "hunter2" not in str(caught.value)
    assert query.split("=")[0].split("&")[0] in str(caught.value)


def test_fan_out_to_two_services(
    make_bus: Callable[..., Bus], registry: Registry, kinds: SimpleNamespace, settled: Callable[[str], bool]
) -> None:
    class Billing:
        def __init__(self) -> None:
            self.seen: list[str] = []

        @subscribe(kinds.OrderPlaced)
        def charge(self, event: Any) -> None:
            self.seen.append(event.order_id)

    class Shipping(Billing):
        pass

    billing, shipping = Billing(), Shipping()
    make_bus("billing", billing).start()
    make_bus("shipping", shipping).start()
    publisher = make_bus("shop")
    publisher.publish(kinds.OrderPlaced("o-1"))
    publisher.publish_many([kinds.OrderPlaced("o-2"), kinds.OrderPlaced("o-3")])
    wait_until(lambda: len(billing.seen) == 3 and len(shipping.seen) == 3, 10)
    assert sorted(billing.seen) == sorted(shipping.seen) == ["o-1", "o-2", "o-3"]
    wait_until(lambda: settled("billing") and settled("shipping"), 5)


def test_a_queue_gets_only_the_manifests_it_subscribed_to(
    make_bus: Callable[..., Bus],
    registry: Registry,
    kinds: SimpleNamespace,
    client: redis.Redis,
    prefix: str,
    settled: Callable[[str], bool],
) -> None:
    seen: list[str] = []

    @registry.subscribe(kinds.OrderPlaced)
    def charge(event: Any) -> None:
        seen.append(event.order_id)

    bus = make_bus("billing").start()
    bus.publish(kinds.OrderCancelled("o-0"))  # same topic, not subscribed
    bus.publish(kinds.OrderPlaced("o-1"))
    wait_until(lambda: seen == ["o-1"], 10)
    wait_until(lambda: settled("billing"), 5, message="the foreign entry to be acknowledged")
    assert bus.dead_letters() == []
    assert client.smembers(f"{prefix}routes:billing") == {b"orders OrderPlaced"}


def test_a_failing_handler_is_retried_with_backoff_then_dead_lettered(
    make_bus: Callable[..., Bus], registry: Registry, kinds: SimpleNamespace, settled: Callable[[str], bool]
) -> None:
    attempts: list[tuple[int, float]] = []

    @registry.subscribe(kinds.OrderPlaced, retries=2, backoff=0.3)
    def charge(event: Any, ctx: Any) -> None:
        attempts.append((ctx.attempt, time.monotonic()))
        raise ValueError(f"card declined for {event.order_id}")

    bus = make_bus("billing").start()
    message_id = bus.publish(kinds.OrderPlaced("o-1"))
    wait_until(bus.dead_letters, 10, message="the dead letter")
    assert [a for a, _ in attempts] == [1, 2, 3]
    # each retry waited out its backoff (0.3s, then 0.9s, minus 10% jitter) in Redis, not in a worker
    assert attempts[1][1] - attempts[0][1] >= 0.25
    assert attempts[2][1] - attempts[1][1] >= 0.8
    [dead] = bus.dead_letters()
    assert dead.message_id == message_id
    assert dead.headers["error-reason"] == "handler-failed"
    assert dead.headers["error-attempt"] == "3"
    assert dead.headers["error-type"] == "builtins.ValueError"
    assert dead.headers["error-message"] == "card declined for o-1"
    assert dead.headers["error-handler"].endswith("charge")
    assert dead.headers["error-queue"] == "billing"
    assert "Traceback" in dead.headers["error-traceback"]
    wait_until(lambda: settled("billing"), 5)


def test_poison_goes_to_the_dead_letter_stream_at_once_and_the_consumer_carries_on(
    make_bus: Callable[..., Bus],
    registry: Registry,
    kinds: SimpleNamespace,
    client: redis.Redis,
    prefix: str,
    settled: Callable[[str], bool],
) -> None:
    seen: list[str] = []

    @registry.subscribe(kinds.OrderPlaced)
    def charge(event: Any) -> None:
        seen.append(event.order_id)

    bus = make_bus("billing").start()
    client.xadd(f"{prefix}topic:orders", {"manifest": "OrderPlaced", "body": b"\xff not json"})
    client.xadd(f"{prefix}queue:billing", {"body": b"no headers at all"})
    client.xadd(f"{prefix}queue:billing", {"manifest": "Nobody", "attempt": "many", "\xe9": b"\xff"})
    bus.publish(kinds.OrderPlaced("o-1"))
    wait_until(lambda: seen == ["o-1"] and len(bus.dead_letters()) == 3, 10)
    reasons = sorted(d.headers["error-reason"] for d in bus.dead_letters())
    assert reasons == ["undecodable", "unknown-manifest", "unknown-manifest"]
    assert all(d.attempt == 1 for d in bus.dead_letters())
    wait_until(lambda: settled("billing"), 5)


def test_send_puts_a_message_on_one_queue(
    make_bus: Callable[..., Bus], registry: Registry, kinds: SimpleNamespace, settled: Callable[[str], bool]
) -> None:
    seen: list[str] = []

    @registry.subscribe(kinds.OrderPlaced)
    def charge(event: Any) -> None:
        seen.append(event.order_id)

    bus = make_bus("billing").start()
    bus.send("billing", kinds.OrderPlaced("o-1"))
    wait_until(lambda: seen == ["o-1"], 10)
    with pytest.raises(PublishError, match="no queue named 'nowhere'"):
        bus.send("nowhere", kinds.OrderPlaced("o-2"))
    wait_until(lambda: settled("billing"), 5)


def test_stop_hands_back_what_it_holds_and_loses_nothing(
    make_bus: Callable[..., Bus],
    registry: Registry,
    kinds: SimpleNamespace,
    redis_url: str,
    prefix: str,
    settled: Callable[[str], bool],
) -> None:
    seen: list[str] = []
    lock = threading.Lock()

    @registry.subscribe(kinds.OrderPlaced)
    def charge(event: Any) -> None:
        time.sleep(0.05)
        with lock:
            seen.append(event.order_id)

    slow_reclaim = f"{redis_url}?prefix={prefix}&reclaim=60&block=0.2"  # only a hand-back can be this quick
    first = make_bus("billing", url=slow_reclaim, concurrency=2, prefetch=8).start()
    ids = [f"o-{i}" for i in range(40)]
    first.publish_many([kinds.OrderPlaced(i) for i in ids])
    wait_until(lambda: len(seen) >= 6, 10)
    first.stop(timeout=10)
    handled_before_stop = len(seen)
    assert handled_before_stop < len(ids)
    make_bus("billing", url=slow_reclaim, concurrency=2).start()
    wait_until(lambda: len(set(seen)) == len(ids), 15, message="every message to be handled")
    assert sorted(set(seen)) == sorted(ids)
    wait_until(lambda: settled("billing"), 5)


def test_entries_of_a_consumer_that_died_are_reclaimed(
    make_bus: Callable[..., Bus],
    registry: Registry,
    kinds: SimpleNamespace,
    client: redis.Redis,
    prefix: str,
    settled: Callable[[str], bool],
) -> None:
    seen: list[tuple[str, int]] = []

    @registry.subscribe(kinds.OrderPlaced)
    def charge(event: Any, ctx: Any) -> None:
        seen.append((event.order_id, ctx.attempt))

    bus = make_bus("billing")
    bus.provision()
    bus.publish_many([kinds.OrderPlaced("o-1"), kinds.OrderPlaced("o-2")])
    assert len(_raw_take(client, prefix, "billing")) == 2
    taken_at = time.monotonic()
    bus.start()
    wait_until(lambda: len(seen) == 2, 10, message="the entries to be reclaimed and handled")
    assert time.monotonic() - taken_at >= 0.9  # reclaim=1: not before they sat idle for a second
    assert sorted(seen) == [("o-1", 2), ("o-2", 2)]  # the delivery count adds to the attempt
    wait_until(lambda: settled("billing"), 5)


def test_an_entry_that_keeps_killing_its_consumers_is_dead_lettered(
    make_bus: Callable[..., Bus],
    registry: Registry,
    kinds: SimpleNamespace,
    client: redis.Redis,
    redis_url: str,
    prefix: str,
    settled: Callable[[str], bool],
) -> None:
    seen: list[str] = []

    @registry.subscribe(kinds.OrderPlaced)
    def charge(event: Any) -> None:
        seen.append(event.order_id)

    bus = make_bus("billing", url=f"{redis_url}?prefix={prefix}&reclaim=0.5&block=0.1&delivery_limit=2")
    bus.provision()
    bus.publish(kinds.OrderPlaced("o-1"))
    [entry] = _raw_take(client, prefix, "billing")
    client.xclaim(f"{prefix}topic:orders", "billing", "another-doomed-consumer", 0, [entry])  # delivered twice
    bus.start()
    wait_until(bus.dead_letters, 10, message="the dead letter")
    [dead] = bus.dead_letters()
    assert dead.headers["error-reason"] == "delivery-limit"
    assert "3 times" in dead.headers["error-message"]
    assert seen == []
    wait_until(lambda: settled("billing"), 5)


def test_a_long_handler_keeps_its_entries_from_being_reclaimed(
    make_bus: Callable[..., Bus],
    registry: Registry,
    kinds: SimpleNamespace,
    redis_url: str,
    prefix: str,
    settled: Callable[[str], bool],
) -> None:
    runs: list[str] = []

    @registry.subscribe(kinds.OrderPlaced)
    def charge(event: Any) -> None:
        runs.append(event.order_id)
        time.sleep(3)

    url = f"{redis_url}?prefix={prefix}&reclaim=1&block=0.1"
    make_bus("billing", url=url, concurrency=1, prefetch=1).start()
    make_bus("billing", url=url, concurrency=1, prefetch=1).start()  # idle, reclaiming every 0.25s
    make_bus("shop").publish(kinds.OrderPlaced("o-1"))
    wait_until(lambda: runs, 5)
    wait_until(lambda: settled("billing"), 10)
    assert runs == ["o-1"]


def test_topic_streams_are_trimmed_only_below_what_every_group_has_acknowledged(
    make_bus: Callable[..., Bus],
    registry: Registry,
    kinds: SimpleNamespace,
    client: redis.Redis,
    redis_url: str,
    prefix: str,
    settled: Callable[[str], bool],
) -> None:
    class Handler:
        def __init__(self) -> None:
            self.seen: list[str] = []

        @subscribe(kinds.OrderPlaced)
        def handle(self, event: Any) -> None:
            self.seen.append(event.order_id)

    fast, late = Handler(), Handler()
    make_bus("fast", fast).start()
    make_bus("late", late).provision()  # subscribed, but not consuming yet
    ids = [f"o-{i}" for i in range(450)]
    publisher = make_bus("shop")
    for start in range(0, len(ids), 150):
        publisher.publish_many([kinds.OrderPlaced(i) for i in ids[start : start + 150]])
    wait_until(lambda: len(fast.seen) == len(ids), 15)
    wait_until(lambda: settled("fast"), 5)
    trimmer = from_url(f"{redis_url}?prefix={prefix}")
    trimmer._trim(keys=[f"{prefix}topic:orders"])  # type: ignore[attr-defined]  # what consumers run now and then
    assert client.xlen(f"{prefix}topic:orders") == len(ids)  # 'late' has read nothing: nothing trimmed
    trimmer.close()
    make_bus("late", late).start()
    wait_until(lambda: len(late.seen) == len(ids), 15)
    wait_until(lambda: client.xlen(f"{prefix}topic:orders") < len(ids), 5, message="the topic stream to be trimmed")
    wait_until(lambda: settled("fast") and settled("late"), 5)


def test_maxlen_caps_topic_streams_and_close_leaves_the_backend_usable(
    redis_url: str, prefix: str, client: redis.Redis
) -> None:
    backend = from_url(f"{redis_url}?prefix={prefix}&maxlen=100")
    envelope = Envelope(body=b"{}", message_id="m", manifest="OrderPlaced")
    backend.publish_many([("orders", envelope)] * 1000)
    assert 100 <= client.xlen(f"{prefix}topic:orders") < 1000
    backend.close()
    backend.publish("orders", envelope)  # reconnects
    assert client.xrevrange(f"{prefix}topic:orders", count=1)[0][1][b"message-id"] == b"m"
    backend.close()


def test_publish_fails_loudly(private_redis: PrivateRedis, client: redis.Redis, prefix: str) -> None:
    backend = from_url(f"{private_redis.url}?prefix={prefix}")
    good = Envelope(body=b"{}", message_id="good", manifest="OrderPlaced")
    bad = Envelope(body=b"{}", message_id="bad", manifest="PaymentTaken")
    private = redis.Redis.from_url(private_redis.url)
    private.set(f"{prefix}topic:payments", "not a stream")
    with pytest.raises(PublishError, match="1 of 2") as caught:
        backend.publish_many([("orders", good), ("payments", bad)])
    assert "bad on 'payments'" in str(caught.value)
    assert "good" not in str(caught.value)
    assert private.xlen(f"{prefix}topic:orders") == 1
    with pytest.raises(PublishError, match="body"):
        backend.publish("orders", Envelope(body=b"{}", message_id="m", manifest="X", headers={"body": "clash"}))
    private.close()
    private_redis.stop()
    with pytest.raises(PublishError, match="did not store message good"):
        backend.publish("orders", good)
    with pytest.raises(PublishError, match="good, bad"):
        backend.publish_many([("orders", good), ("orders", bad)])
    backend.close()


def test_consumers_come_back_after_redis_restarts(
    private_redis: PrivateRedis, registry: Registry, kinds: SimpleNamespace, prefix: str
) -> None:
    seen: list[str] = []

    @registry.subscribe(kinds.OrderPlaced)
    def charge(event: Any) -> None:
        seen.append(event.order_id)

    url = f"{private_redis.url}?prefix={prefix}&reclaim=1&block=0.2"
    bus = Bus("billing", url, registry=registry).start()
    try:
        bus.publish(kinds.OrderPlaced("o-1"))
        wait_until(lambda: seen == ["o-1"], 10)
        private_redis.stop()
        private_redis.start()  # without persistence: streams and groups are gone
        private = redis.Redis.from_url(private_redis.url)
        wait_until(
            lambda: private.exists(f"{prefix}topic:orders") and private.xinfo_groups(f"{prefix}topic:orders"),
            10,
            message="the consumer to recreate its groups",
        )
        private.close()
        publisher = Bus("shop", url, registry=Registry())
        publisher.backend.publish(
            "orders", Envelope(body=b'{"order_id": "o-2"}', message_id=uuid.uuid4().hex, manifest="OrderPlaced")
        )
        wait_until(lambda: seen == ["o-1", "o-2"], 10, message="consumption to resume")
    finally:
        bus.stop(timeout=5)


def test_a_delivery_left_unsettled_while_redis_was_away_is_handled_again(
    persistent_redis: PrivateRedis,
    registry: Registry,
    kinds: SimpleNamespace,
    prefix: str,
    settled: Callable[..., bool],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="eventbus.redis")
    server = persistent_redis
    attempts: list[int] = []
    gate = threading.Event()

    @registry.subscribe(kinds.OrderPlaced)
    def charge(event: Any, ctx: Any) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            gate.wait(10)

    url = f"{server.url}?prefix={prefix}&reclaim=1&block=0.2"
    bus = Bus("billing", url, registry=registry).start()
    try:
        bus.publish(kinds.OrderPlaced("o-1"))
        wait_until(lambda: attempts == [1], 10)
        server.stop()
        gate.set()  # the handler succeeds, but the ack cannot reach Redis
        wait_until(lambda: any("stays pending" in r.getMessage() for r in caplog.records), 10)
        server.start()  # the pending entry survived in the append-only file
        wait_until(lambda: attempts == [1, 2], 15, message="the entry to be reclaimed and handled again")
        private = redis.Redis.from_url(server.url)
        wait_until(lambda: settled("billing", private), 5)
        private.close()
    finally:
        bus.stop(timeout=5)
