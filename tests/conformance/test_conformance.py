"""The delivery promises of DESIGN.md, the same cases against every backend."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from typing import Any

import attrs
import pytest

from eventbus import Backoff, Bus, Context, MemoryDedupCache, Registry, wait_until
from eventbus.envelope import Envelope
from tests.conformance.harness import FIFO, Harness


@attrs.define
class Shop:
    """Message types declared under the test's unique topic names."""

    registry: Registry
    OrderPlaced: Any
    OrderAudited: Any
    PaymentCharged: Any
    Ledger: Any


@pytest.fixture
def shop(harness: Harness) -> Shop:
    registry = Registry()

    @registry.message(topic=harness.name_of("orders"), name="OrderPlaced")
    @attrs.frozen
    class OrderPlaced:
        order_id: str
        amount_cents: int = 100

    @registry.message(topic=harness.name_of("orders"), name="OrderAudited")
    @attrs.frozen
    class OrderAudited:
        order_id: str

    @registry.message(topic=harness.name_of("payments"), name="PaymentCharged")
    @attrs.frozen
    class PaymentCharged:
        order_id: str

    @registry.message(topic=harness.name_of("ledger") + ".fifo", name="Ledger", group_by="account")
    @attrs.frozen
    class Ledger:
        account: str
        n: int

    return Shop(registry, OrderPlaced, OrderAudited, PaymentCharged, Ledger)


def collector() -> tuple[list[Any], Any]:
    seen: list[Any] = []
    lock = threading.Lock()

    def collect(event: Any) -> None:
        with lock:
            seen.append(event)

    return seen, collect


def test_publish_and_consume(harness: Harness, shop: Shop) -> None:
    seen, collect = collector()
    shop.registry.subscribe(shop.OrderPlaced)(collect)
    bus = harness.bus("payments", shop.registry).start()
    bus.publish(shop.OrderPlaced("o-1", 1200))
    wait_until(lambda: seen == [shop.OrderPlaced("o-1", 1200)], harness.timeout)


def test_fan_out_to_two_services_with_manifest_filtering(harness: Harness, shop: Shop) -> None:
    payments, audit = Registry(), Registry()
    paid, pay = collector()
    audited, log_it = collector()
    payments.subscribe(shop.OrderPlaced)(pay)
    audit.subscribe(shop.OrderPlaced, shop.OrderAudited)(log_it)
    pay_bus = harness.bus("payments", payments).start()
    audit_bus = harness.bus("audit", audit).start()
    pay_bus.publish(shop.OrderAudited("a-1"))  # only the audit service takes it
    pay_bus.publish(shop.OrderPlaced("o-1"))
    wait_until(lambda: len(audited) == 2 and paid, harness.timeout)
    assert paid == [shop.OrderPlaced("o-1")]
    assert sorted(map(repr, audited)) == sorted(map(repr, [shop.OrderAudited("a-1"), shop.OrderPlaced("o-1")]))
    assert audit_bus.dead_letters() == []
    assert pay_bus.dead_letters() == []


def test_send_to_one_queue(harness: Harness, shop: Shop) -> None:
    seen, collect = collector()
    shop.registry.subscribe(shop.OrderPlaced)(collect)
    bus = harness.bus("payments", shop.registry).start()
    bus.send(bus.service, shop.OrderPlaced("o-7"))
    wait_until(lambda: seen == [shop.OrderPlaced("o-7")], harness.timeout)


def test_ack_only_after_every_handler_succeeded(harness: Harness, shop: Shop) -> None:
    release, first_done = threading.Event(), threading.Event()

    @shop.registry.subscribe(shop.OrderPlaced)
    def quick(event: Any) -> None:
        first_done.set()

    @shop.registry.subscribe(shop.OrderPlaced)
    def slow(event: Any) -> None:
        release.wait(harness.timeout)

    bus = harness.bus("payments", shop.registry).start()
    bus.publish(shop.OrderPlaced("o-1"))
    assert first_done.wait(harness.timeout)
    assert harness.pending(bus, bus.service) == 1  # one handler done, one running: not acked
    release.set()
    wait_until(lambda: harness.pending(bus, bus.service) == 0, harness.timeout, message="the ack")


def test_retry_with_backoff_then_dead_letter_with_error_headers(harness: Harness, shop: Shop) -> None:
    attempts: list[tuple[int, float]] = []

    @shop.registry.subscribe(shop.OrderPlaced, retries=2, backoff=Backoff(initial=1.0, factor=2.0, jitter=0.0))
    def always_fails(event: Any, ctx: Context) -> None:
        attempts.append((ctx.attempt, time.monotonic()))
        raise RuntimeError(f"gateway down (attempt {ctx.attempt})")

    bus = harness.bus("payments", shop.registry).start()
    bus.publish(shop.OrderPlaced("o-1"))
    (dead,) = wait_until(lambda: bus.dead_letters(), harness.timeout + 3 + 2 * harness.delay_slack)
    assert [a for a, _ in attempts] == [1, 2, 3]
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(attempts)]
    for gap, wanted in zip(gaps, (1.0, 2.0), strict=True):
        assert wanted * 0.95 <= gap <= wanted + harness.delay_slack, (gaps, harness.delay_slack)
    headers = dead.to_wire()
    assert headers["error-reason"] == "handler-failed"
    assert headers["error-type"] == "builtins.RuntimeError"
    assert headers["error-message"] == "gateway down (attempt 3)"
    assert headers["error-handler"].endswith("always_fails")
    assert headers["error-attempt"] == "3"
    assert "Traceback" in headers["error-traceback"]
    assert dead.manifest == "OrderPlaced"


POISON = [
    pytest.param(b"\x00\xff\xfe not json", {"manifest": "OrderPlaced"}, "undecodable", id="random-bytes"),
    pytest.param(b'{"order_id": "o"}', {"manifest": "NoSuchThing"}, "unknown-manifest", id="unknown-manifest"),
    pytest.param(b'{"id": 1}', {"manifest": "OrderPlaced"}, "undecodable", id="wrong-schema"),
    pytest.param(b"<o/>", {"manifest": "OrderPlaced", "content-type": "text/xml"}, "unknown-content-type", id="xml"),
]


@pytest.mark.parametrize(("body", "wire", "reason"), POISON)
def test_poison_is_dead_lettered_at_once_and_the_worker_lives(
    harness: Harness, shop: Shop, body: bytes, wire: dict[str, str], reason: str
) -> None:
    seen, collect = collector()
    shop.registry.subscribe(shop.OrderPlaced, retries=5)(collect)
    bus = harness.bus("payments", shop.registry, concurrency=1).start()
    bus.backend.send(bus.service, Envelope.from_wire(body, {"content-type": "application/json", **wire}))
    (dead,) = wait_until(lambda: bus.dead_letters(), harness.timeout, message="the poison in the DLQ")
    assert dead.headers["error-reason"] == reason
    assert dead.body == body
    bus.publish(shop.OrderPlaced("still-alive"))
    wait_until(lambda: seen == [shop.OrderPlaced("still-alive")], harness.timeout)


def test_dedup_keeps_a_succeeded_handler_from_running_again(harness: Harness, shop: Shop) -> None:
    runs: Counter[str] = Counter()

    @shop.registry.subscribe(shop.OrderPlaced)
    def steady(event: Any) -> None:
        runs["steady"] += 1

    @shop.registry.subscribe(shop.OrderPlaced, retries=3, backoff=Backoff(initial=0.2, jitter=0))
    def flaky(event: Any, ctx: Context) -> None:
        runs["flaky"] += 1
        if ctx.attempt < 3:
            raise ConnectionError("try again")

    bus = harness.bus("payments", shop.registry, dedup=MemoryDedupCache()).start()
    bus.publish(shop.OrderPlaced("o-1"))
    wait_until(lambda: runs["flaky"] == 3 and harness.pending(bus, bus.service) == 0, harness.timeout + 5)
    assert runs == {"steady": 1, "flaky": 3}


def test_fifo_keeps_order_within_a_group(harness: Harness, shop: Shop) -> None:
    harness.require(FIFO)
    seen, collect = collector()
    shop.registry.subscribe(shop.Ledger)(collect)
    bus = harness.bus("books", shop.registry, concurrency=4).start()
    for n in range(20):
        bus.publish(shop.Ledger("acct-a" if n % 2 else "acct-b", n))
    wait_until(lambda: len(seen) == 20, harness.timeout)
    for account in ("acct-a", "acct-b"):
        ns = [e.n for e in seen if e.account == account]
        assert ns == sorted(ns)


def test_stop_loses_nothing(harness: Harness, shop: Shop) -> None:
    handled: Counter[str] = Counter()
    lock = threading.Lock()

    @shop.registry.subscribe(shop.OrderPlaced)
    def slow(event: Any) -> None:
        time.sleep(0.01)
        with lock:
            handled[event.order_id] += 1

    total = 150
    first = harness.bus("payments", shop.registry, concurrency=4)
    first.provision()
    first.publish_many([shop.OrderPlaced(str(i)) for i in range(total)])
    first.start()
    wait_until(lambda: sum(handled.values()) >= 20, harness.timeout)
    first.stop(timeout=10)
    stopped_at = sum(handled.values())
    assert stopped_at < total

    second = harness.bus("payments", shop.registry, concurrency=4).start()
    wait_until(lambda: sum(handled.values()) >= total, harness.timeout * 3)
    second.stop(timeout=10)
    assert len(handled) == total  # nothing lost
    assert set(handled.values()) == {1}  # nothing acked twice without being handled


def test_async_handlers(harness: Harness, shop: Shop) -> None:
    seen, collect = collector()

    @shop.registry.subscribe(shop.OrderPlaced)
    async def handle(event: Any) -> None:
        await asyncio.sleep(0.001)
        collect(event)

    bus = harness.bus("payments", shop.registry).start()
    for i in range(5):
        bus.publish(shop.OrderPlaced(str(i)))
    wait_until(lambda: len(seen) == 5, harness.timeout)


def test_correlation_and_causation_across_a_cascade(harness: Harness, shop: Shop) -> None:
    contexts: dict[str, tuple[str, str | None, str]] = {}

    @shop.registry.subscribe(shop.OrderPlaced)
    def charge(event: Any, ctx: Context) -> None:
        contexts["placed"] = (ctx.correlation_id, ctx.causation_id, ctx.message_id)
        ctx.publish(shop.PaymentCharged(event.order_id))

    @shop.registry.subscribe(shop.PaymentCharged)
    def audit(event: Any, ctx: Context) -> None:
        contexts["charged"] = (ctx.correlation_id, ctx.causation_id, ctx.message_id)
        bus.publish(shop.OrderAudited(event.order_id))  # plain publish inside a handler

    @shop.registry.subscribe(shop.OrderAudited)
    def done(event: Any, ctx: Context) -> None:
        contexts["audited"] = (ctx.correlation_id, ctx.causation_id, ctx.message_id)

    bus: Bus = harness.bus("payments", shop.registry).start()
    first = bus.publish(shop.OrderPlaced("o-1"))
    wait_until(lambda: len(contexts) == 3, harness.timeout)
    assert {c[0] for c in contexts.values()} == {first}
    assert contexts["placed"][1] is None
    assert contexts["placed"][2] == first
    assert contexts["charged"][1] == contexts["placed"][2]
    assert contexts["audited"][1] == contexts["charged"][2]
