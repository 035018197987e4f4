from __future__ import annotations

from typing import Any

import pika
import pytest
from rabbitmq_services import declare
from rabbitmq_support import Broker, listing

from eventbus import Bus, Registry, TopologyConflictError
from eventbus.backends.rabbitmq import RabbitMQBackend
from eventbus.backends.rabbitmq.topology import delay_label, rung

pytestmark = pytest.mark.rabbitmq


def shop(registry: Registry, uid: str) -> Bus:
    types = declare(registry, uid)
    OrderPlaced = types["OrderPlaced"]
    PaymentCharged = types["PaymentCharged"]

    @registry.subscribe(OrderPlaced, PaymentCharged)
    def ship(event: Any) -> None: ...

    @registry.subscribe(OrderPlaced, queue=f"audit-{uid}")
    def audit(event: OrderPlaced) -> None: ...

    return Bus(service=f"shipping-{uid}", registry=registry)


def snapshot(uid: str) -> dict[str, Any]:
    """Everything on the broker whose name carries ``uid``, as the broker reports it."""
    queues = {
        row["name"]: (row["durable"], row["type"], {a[0]: a[2] for a in row["arguments"]})
        for row in listing("queues", "name", "durable", "type", "arguments")
        if uid in row["name"]
    }
    exchanges = {
        row["name"]: (row["type"], row["durable"])
        for row in listing("exchanges", "name", "type", "durable")
        if uid in row["name"]
    }
    bindings = {
        (row["source_name"], row["destination_name"], row["routing_key"])
        for row in listing("bindings", "source_name", "destination_name", "routing_key")
        if uid in row["destination_name"] and row["source_name"]  # the default exchange binds every queue
    }
    return {"queues": queues, "exchanges": exchanges, "bindings": bindings}


def test_provisioning_creates_exactly_the_plan_and_a_second_run_changes_nothing(
    registry: Registry, uid: str, amqp_url: str, broker: Broker
) -> None:
    bus = shop(registry, uid)
    backend = RabbitMQBackend.from_url(amqp_url + "&retry_delays=0.5,2,60")
    backend.provision(bus.topology())
    first = snapshot(uid)

    service, audit = f"shipping-{uid}", f"audit-{uid}"
    assert first["exchanges"] == {f"orders-{uid}": ("topic", True), f"payments-{uid}": ("topic", True)}
    assert first["bindings"] == {
        (f"orders-{uid}", service, "OrderPlaced"),
        (f"payments-{uid}", service, "PaymentCharged"),
        (f"orders-{uid}", audit, "OrderPlaced"),
    }  # OrderCancelled is handled by nobody: no binding for it
    expected_queues = {}
    for queue in (service, audit):
        dead = {"x-queue-type": "classic", "x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{queue}-dlq"}
        expected_queues[queue] = (True, "classic", dead)
        expected_queues[f"{queue}-dlq"] = (True, "classic", {"x-queue-type": "classic"})
        for seconds, label in ((0.5, "500ms"), (2, "2s"), (60, "1m")):
            expected_queues[f"{queue}-retry-{label}"] = (
                True,
                "classic",
                {
                    "x-queue-type": "classic",
                    "x-message-ttl": int(seconds * 1000),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue,
                },
            )
    assert first["queues"] == expected_queues
    for queue in expected_queues:
        assert broker.queue_exists(queue)

    broker.publish_raw(service, b"keep me")
    backend.provision(bus.topology())
    assert snapshot(uid) == first
    assert broker.depth(service) == 1  # provisioning again never touches messages
    backend.close()


def test_quorum_queues_on_request(registry: Registry, uid: str, amqp_url: str, broker: Broker) -> None:
    bus = shop(registry, uid)
    backend = RabbitMQBackend.from_url(amqp_url + "&queue_type=quorum&retry_delays=1")
    backend.provision(bus.topology())
    queues = snapshot(uid)["queues"]
    assert {kind for _, kind, _ in queues.values()} == {"quorum"}
    retry = queues[f"shipping-{uid}-retry-1s"][2]
    assert retry["x-dead-letter-strategy"] == "at-least-once"
    assert retry["x-overflow"] == "reject-publish"
    backend.close()


def test_a_conflicting_queue_is_reported_with_the_fix_and_left_alone(
    registry: Registry, uid: str, amqp_url: str, broker: Broker
) -> None:
    bus = shop(registry, uid)
    service = f"shipping-{uid}"
    dead_letters = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{service}-dlq"}
    broker.channel.queue_declare(service, durable=True, arguments={"x-queue-type": "quorum", **dead_letters})
    broker.publish_raw(service, b"precious")
    audit = f"audit-{uid}"
    broker.channel.queue_declare(audit, durable=True)  # made by hand, without a dead-letter exchange

    with pytest.raises(TopologyConflictError) as info:
        RabbitMQBackend.from_url(amqp_url + "&retry_delays=1").provision(bus.topology())
    text = str(info.value)
    assert f"queue '{service}' already exists with x-queue-type = 'quorum'" in text
    assert "eventbus needs x-queue-type = 'classic'" in text
    assert "use queue_type=quorum in the URL" in text
    assert f"rabbitmqctl delete_queue {service}" in text
    assert f"queue '{audit}' already exists with x-dead-letter-exchange = (not set)" in text
    assert broker.depth(service) == 1  # nothing deleted


def test_a_conflicting_exchange_is_reported(registry: Registry, uid: str, amqp_url: str, broker: Broker) -> None:
    bus = shop(registry, uid)
    broker.channel.exchange_declare(f"orders-{uid}", "fanout", durable=True)
    with pytest.raises(TopologyConflictError, match=rf"exchange 'orders-{uid}' already exists with type = 'fanout'"):
        RabbitMQBackend.from_url(amqp_url).provision(bus.topology())
    assert broker.exchange_exists(f"orders-{uid}")


def test_delays_round_to_the_nearest_rung_by_ratio() -> None:
    ladder = (0.1, 0.3, 1.0, 3.0, 10.0)
    assert rung(0, ladder) is None
    assert rung(0.9, ladder) == 1.0
    assert rung(1.6, ladder) == 1.0  # sqrt(1 * 3) = 1.73 is the midpoint
    assert rung(1.8, ladder) == 3.0
    assert rung(0.001, ladder) == 0.1
    assert rung(1000, ladder) == 10.0
    assert [delay_label(d) for d in (0.1, 1.5, 3, 180, 3600)] == ["100ms", "1500ms", "3s", "3m", "1h"]


def test_url_options_are_validated() -> None:
    from eventbus import ConfigurationError

    with pytest.raises(ConfigurationError, match="queue_type must be 'classic' or 'quorum'"):
        RabbitMQBackend.from_url("amqp://guest:secret@127.0.0.1/?queue_type=stream")
    with pytest.raises(ConfigurationError, match="retry_delays") as info:
        RabbitMQBackend.from_url("amqp://guest:secret@127.0.0.1/?retry_delays=1,x")
    assert "secret" not in str(info.value)
    backend = RabbitMQBackend.from_url("amqps://u:p@example.com/v?heartbeat=7&queue_type=quorum")
    parameters = backend.options.connection_parameters("publish")
    assert isinstance(parameters, pika.URLParameters)
    assert parameters.heartbeat == 7
    assert parameters.ssl_options is not None
    assert parameters.client_properties["connection_name"].endswith("/publish")
