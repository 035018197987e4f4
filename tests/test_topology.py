from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

from eventbus import Bus, DeclarationError, QueuePlan, Registry, Subscription


@pytest.fixture
def types_(registry: Registry) -> dict[str, Any]:
    @registry.message(topic="orders")
    @attrs.frozen
    class OrderPlaced:
        order_id: str

    @registry.message(topic="orders")
    @attrs.frozen
    class OrderCancelled:
        order_id: str

    @registry.message(topic="orders")
    @attrs.frozen
    class OrderAudited:
        order_id: str

    @registry.message(topic="ledger.fifo", group_by="account")
    @attrs.frozen
    class Posted:
        account: str

    return {"placed": OrderPlaced, "cancelled": OrderCancelled, "audited": OrderAudited, "posted": Posted}


def test_plan_subscribes_the_service_queue_to_exactly_the_handled_manifests(
    registry: Registry, types_: dict[str, Any]
) -> None:
    registry.subscribe(types_["placed"], types_["cancelled"])(lambda e: None)
    plan = Bus("payments", "memory://", registry=registry).topology()
    assert plan.service == "payments"
    assert plan.topics == ("ledger.fifo", "orders")  # every declared topic, so publishing works
    assert plan.queues == (QueuePlan("payments", "payments-dlq", False),)
    assert plan.subscriptions == (Subscription("orders", "payments", ("OrderCancelled", "OrderPlaced")),)


def test_own_queue_and_fifo_queue(registry: Registry, types_: dict[str, Any]) -> None:
    registry.subscribe(types_["placed"])(lambda e: None)
    registry.subscribe(types_["cancelled"], queue="payments-refunds")(lambda e: None)
    registry.subscribe(types_["posted"])(lambda e: None)
    plan = Bus("payments", "memory://", registry=registry).topology()
    assert plan.queues == (
        QueuePlan("payments", "payments-dlq"),
        QueuePlan("payments-refunds", "payments-refunds-dlq"),
        QueuePlan("payments.fifo", "payments-dlq.fifo", fifo=True),
    )
    assert plan.subscriptions == (
        Subscription("ledger.fifo", "payments.fifo", ("Posted",)),
        Subscription("orders", "payments", ("OrderPlaced",)),
        Subscription("orders", "payments-refunds", ("OrderCancelled",)),
    )


def test_a_fifo_queue_cannot_take_a_standard_topic(registry: Registry, types_: dict[str, Any]) -> None:
    registry.subscribe(types_["placed"], queue="strict.fifo")(lambda e: None)
    with pytest.raises(DeclarationError, match=r"queue 'strict.fifo' is FIFO but .*OrderPlaced is published"):
        Bus("payments", "memory://", registry=registry)


def test_plan_prints_and_serializes(registry: Registry, types_: dict[str, Any]) -> None:
    registry.subscribe(types_["placed"])(lambda e: None)
    plan = Bus("payments", "memory://", registry=registry).topology()
    text = str(plan)
    assert "queue payments -> dead letters payments-dlq" in text
    assert "orders -> payments [OrderPlaced]" in text
    data = json.loads(plan.to_json())
    assert data["subscriptions"] == [{"topic": "orders", "queue": "payments", "manifests": ["OrderPlaced"]}]


def test_provision_is_idempotent_in_memory(registry: Registry, types_: dict[str, Any], memory_url: str) -> None:
    seen: list[Any] = []
    registry.subscribe(types_["placed"])(seen.append)
    bus = Bus("payments", memory_url, registry=registry)
    bus.provision()
    bus.provision()
    bus.start()
    try:
        bus.publish(types_["placed"]("o-1"))
        from eventbus import wait_until

        wait_until(lambda: seen)
    finally:
        bus.stop()
    assert seen == [types_["placed"]("o-1")]  # one subscription, not two
