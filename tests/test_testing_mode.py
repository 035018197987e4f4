from __future__ import annotations

import asyncio
from typing import Any

import attrs
import pytest

from eventbus import Bus, ConfigurationError, Context, PublishError, Registry, Testing
from eventbus.backends.memory import MemoryBackend


@pytest.fixture
def shop(registry: Registry) -> dict[str, Any]:
    @registry.message(topic="orders")
    @attrs.frozen
    class OrderPlaced:
        order_id: str
        amount: int

    @registry.message(topic="payments")
    @attrs.frozen
    class PaymentCharged:
        order_id: str

    @registry.message(topic="shipping")
    @attrs.frozen
    class Shipped:
        order_id: str

    @registry.message(topic="orders")
    @attrs.frozen
    class OrderAudited:
        order_id: str

    return {"OrderPlaced": OrderPlaced, "PaymentCharged": PaymentCharged, "Shipped": Shipped, "Audited": OrderAudited}


def test_publish_runs_the_whole_cascade_before_returning(registry: Registry, shop: dict[str, Any]) -> None:
    placed, charged, shipped = shop["OrderPlaced"], shop["PaymentCharged"], shop["Shipped"]

    @registry.subscribe(placed)
    def charge(event: Any, ctx: Context) -> None:
        ctx.publish(charged(event.order_id))

    @registry.subscribe(charged)
    def ship(event: Any) -> None:
        bus.publish(shipped(event.order_id))  # no ctx: the flow is still carried

    bus = Bus("shop", "memory://", registry=registry)
    with bus.testing() as t:
        first = bus.publish(placed("o-1", 1200))
        assert t.published(charged) == [charged("o-1")]
        assert t.published(shipped) == [shipped("o-1")]
    envelopes = [env for _, env in t.envelopes]
    assert [e.manifest for e in envelopes] == ["OrderPlaced", "PaymentCharged", "Shipped"]
    assert {e.correlation_id for e in envelopes} == {first}
    assert [e.causation_id for e in envelopes] == [None, envelopes[0].message_id, envelopes[1].message_id]
    assert [h.handler.rsplit(".", 1)[1] for h in t.handled] == ["charge", "ship"]


def test_cascades_are_breadth_first(registry: Registry, shop: dict[str, Any]) -> None:
    placed, charged, audited = shop["OrderPlaced"], shop["PaymentCharged"], shop["Audited"]
    order: list[str] = []

    @registry.subscribe(placed)
    def fan_out(event: Any, ctx: Context) -> None:
        order.append(f"placed {event.order_id}")
        ctx.publish(charged(event.order_id + "a"))
        ctx.publish(charged(event.order_id + "b"))

    @registry.subscribe(charged)
    def on_charged(event: Any, ctx: Context) -> None:
        order.append(f"charged {event.order_id}")
        ctx.publish(audited(event.order_id))

    @registry.subscribe(audited)
    def on_audit(event: Any) -> None:
        order.append(f"audited {event.order_id}")

    bus = Bus("shop", "memory://", registry=registry)
    with bus.testing():
        bus.publish(placed("1", 1))
    assert order == ["placed 1", "charged 1a", "charged 1b", "audited 1a", "audited 1b"]


def test_long_cascades_do_not_recurse(registry: Registry) -> None:
    @registry.message(topic="chain")
    @attrs.frozen
    class Step:
        n: int

    @registry.subscribe(Step)
    def next_step(event: Step, ctx: Context) -> None:
        if event.n:
            ctx.publish(Step(event.n - 1))

    bus = Bus("chain", "memory://", registry=registry)
    with bus.testing() as t:
        bus.publish(Step(3000))
    assert len(t.handled) == 3001


def test_a_service_only_sees_the_types_it_handles(registry: Registry, shop: dict[str, Any]) -> None:
    placed, audited = shop["OrderPlaced"], shop["Audited"]  # both on topic "orders"
    seen: list[Any] = []
    registry.subscribe(placed)(seen.append)
    bus = Bus("payments", "memory://", registry=registry)
    with bus.testing() as t:
        bus.publish(audited("o-1"))
        bus.publish(placed("o-2", 5))
    assert seen == [placed("o-2", 5)]
    assert t.dead_letters == []
    assert t.published(audited) == [audited("o-1")]


def test_fan_out_to_two_services_in_one_session(registry: Registry, shop: dict[str, Any]) -> None:
    placed, charged = shop["OrderPlaced"], shop["PaymentCharged"]
    payments, analytics = Registry(), Registry()
    got: dict[str, list[Any]] = {"payments": [], "analytics": []}

    @payments.subscribe(placed)
    def charge(event: Any, ctx: Context) -> None:
        got["payments"].append(event)
        ctx.publish(charged(event.order_id))

    @analytics.subscribe(placed, charged)
    def count(event: Any) -> None:
        got["analytics"].append(event)

    pay_bus = Bus("payments", "memory://", registry=payments)
    stats_bus = Bus("analytics", "memory://", registry=analytics)
    with Testing(pay_bus, stats_bus):
        stats_bus.publish(placed("o-1", 10))
    assert got == {"payments": [placed("o-1", 10)], "analytics": [placed("o-1", 10), charged("o-1")]}


def test_handler_errors_propagate_by_default(registry: Registry, shop: dict[str, Any]) -> None:
    placed = shop["OrderPlaced"]

    @registry.subscribe(placed)
    def broken(event: Any) -> None:
        raise ValueError("card reader on fire")

    bus = Bus("shop", "memory://", registry=registry)
    with bus.testing(), pytest.raises(ValueError, match="card reader on fire"):
        bus.publish(placed("o-1", 1))


def test_recorded_errors_follow_the_retry_policy_then_dead_letter(registry: Registry, shop: dict[str, Any]) -> None:
    placed = shop["OrderPlaced"]
    attempts: list[int] = []

    @registry.subscribe(placed, retries=2, backoff=0.5)
    def flaky(event: Any, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError(f"attempt {ctx.attempt}")

    bus = Bus("shop", "memory://", registry=registry)
    with bus.testing(raise_errors=False) as t:
        bus.publish(placed("o-1", 1))
        parked = bus.dead_letters()
    assert attempts == [1, 2, 3]
    assert [e.action for e in t.errors] == ["retry", "retry", "dead_letter"]
    assert [r.envelope.attempt for r in t.retries] == [2, 3]
    assert 0.45 <= t.retries[0].delay <= 0.55
    assert 1.35 <= t.retries[1].delay <= 1.65
    (dead,) = t.dead_letters
    assert dead.reason == "handler-failed"
    assert dead.headers["error-type"] == "builtins.RuntimeError"
    assert dead.headers["error-message"] == "attempt 3"
    assert dead.headers["error-handler"].endswith("flaky")
    assert dead.headers["error-attempt"] == "3"
    assert "RuntimeError: attempt 3" in dead.headers["error-traceback"]
    assert parked == [dead.envelope]


def test_on_failure_choices(registry: Registry, shop: dict[str, Any]) -> None:
    placed = shop["OrderPlaced"]
    calls: list[str] = []

    @registry.subscribe(placed, on_failure="dead_letter")
    def strict(event: Any) -> None:
        calls.append("strict")
        raise KeyError("no such customer")

    bus = Bus("strict", "memory://", registry=registry)
    with bus.testing(raise_errors=False) as t:
        bus.publish(placed("o-1", 1))
    assert calls == ["strict"]
    assert [d.reason for d in t.dead_letters] == ["handler-failed"]

    other = Registry()

    @other.subscribe(placed, on_failure="drop")
    def relaxed(event: Any) -> None:
        calls.append("relaxed")
        raise KeyError("whatever")

    bus = Bus("relaxed", "memory://", registry=other)
    with bus.testing(raise_errors=False) as t:
        bus.publish(placed("o-1", 1))
    assert calls[-1:] == ["relaxed"]
    assert t.dead_letters == []
    assert t.retries == []
    assert [e.action for e in t.errors] == ["drop"]


def test_async_handlers_run_in_testing_mode(registry: Registry, shop: dict[str, Any]) -> None:
    placed, charged = shop["OrderPlaced"], shop["PaymentCharged"]

    @registry.subscribe(placed)
    async def charge(event: Any, ctx: Context) -> None:
        await asyncio.sleep(0)
        ctx.publish(charged(event.order_id))

    bus = Bus("shop", "memory://", registry=registry)
    with bus.testing() as t:
        bus.publish(placed("o-1", 1))
    assert t.published(charged) == [charged("o-1")]


def test_testing_restores_the_backend(registry: Registry, memory_url: str) -> None:
    bus = Bus("shop", memory_url, registry=registry)
    before = bus.backend
    assert isinstance(before, MemoryBackend)
    with bus.testing():
        assert bus.backend is not before
    assert bus.backend is before


def test_send_goes_to_one_queue(registry: Registry, shop: dict[str, Any]) -> None:
    placed = shop["OrderPlaced"]
    seen: list[Any] = []
    registry.subscribe(placed)(seen.append)
    bus = Bus("shop", "memory://", registry=registry)
    with bus.testing():
        bus.send("shop", placed("o-9", 1))
        with pytest.raises(PublishError, match="no queue named 'nowhere'"):
            bus.send("nowhere", placed("o-9", 1))
    assert seen == [placed("o-9", 1)]


def test_publishing_an_undeclared_type_is_a_clear_error(registry: Registry) -> None:
    @attrs.frozen
    class Loose:
        x: int

    bus = Bus("shop", "memory://", registry=registry)
    with pytest.raises(TypeError, match=r"Loose is not a message type; declare it with @message"):
        bus.publish(Loose(1))


def test_headers_travel_and_are_checked(registry: Registry, shop: dict[str, Any]) -> None:
    placed = shop["OrderPlaced"]
    seen: list[dict[str, str]] = []

    @registry.subscribe(placed)
    def read(event: Any, ctx: Context) -> None:
        seen.append(dict(ctx.headers))

    bus = Bus("shop", "memory://", registry=registry)
    with bus.testing():
        bus.publish(placed("o-1", 1), headers={"tenant": "acme"})
        with pytest.raises(ValueError, match="'manifest' is set by eventbus"):
            bus.publish(placed("o-1", 1), headers={"manifest": "x"})
    assert seen == [{"tenant": "acme"}]


def test_publish_many(registry: Registry, shop: dict[str, Any]) -> None:
    placed = shop["OrderPlaced"]
    seen: list[Any] = []
    registry.subscribe(placed)(seen.append)
    bus = Bus("shop", "memory://", registry=registry)
    with bus.testing():
        ids = bus.publish_many([placed(str(i), i) for i in range(5)])
    assert len(set(ids)) == 5
    assert seen == [placed(str(i), i) for i in range(5)]


@pytest.fixture
def bus(registry: Registry, shop: dict[str, Any]) -> Bus:
    placed, charged = shop["OrderPlaced"], shop["PaymentCharged"]

    @registry.subscribe(placed)
    def charge(event: Any, ctx: Context) -> None:
        ctx.publish(charged(event.order_id))

    return Bus("payments", "memory://", registry=registry)


def test_pytest_plugin_fixture(bus: Bus, eventbus_testing: Testing, shop: dict[str, Any]) -> None:
    bus.publish(shop["OrderPlaced"]("o-1", 1200))
    assert eventbus_testing.published(shop["PaymentCharged"]) == [shop["PaymentCharged"]("o-1")]


def test_testing_refuses_a_running_bus(registry: Registry, memory_url: str) -> None:
    bus = Bus("shop", memory_url, registry=registry).start()
    try:
        with pytest.raises(ConfigurationError, match=r"is running.*Call bus.stop\(\) first"), bus.testing():
            pass
    finally:
        bus.stop()
