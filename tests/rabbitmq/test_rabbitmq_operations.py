"""Operations on RabbitMQ: replaying and purging dead letters, and comparing the topology with the broker."""

from __future__ import annotations

import time
from typing import Any

import pika
import pytest
from rabbitmq_services import declare
from rabbitmq_support import Broker, listing

from eventbus import Bus, Envelope, PublishError, Registry
from eventbus.backends.rabbitmq import RabbitMQBackend, wire
from eventbus.backends.rabbitmq.diff import InspectionError
from eventbus.backends.rabbitmq.publisher import Outgoing

pytestmark = pytest.mark.rabbitmq


def shop(registry: Registry, uid: str, url: str) -> Bus:
    """Service ``svc-<uid>`` takes OrderPlaced and OrderCancelled from ``orders-<uid>``; ``payments-<uid>`` too."""

    types = declare(registry, uid)
    OrderPlaced = types["OrderPlaced"]
    OrderCancelled = types["OrderCancelled"]

    @registry.subscribe(OrderPlaced, OrderCancelled)
    def on_order(event: Any) -> None: ...

    return Bus(service=f"svc-{uid}", url=url + "&retry_delays=1,10", registry=registry)


def dead_letter(n: int) -> Envelope:
    """A dead letter as the dispatcher makes it: error headers, attempt 3, a user header."""
    return Envelope(
        body=f'{{"order_id": "o-{n}"}}'.encode(),
        message_id=f"m{n}-{time.time_ns()}",
        manifest="OrderPlaced",
        timestamp=time.time(),
        attempt=3,
        headers={
            "tenant": "acme",
            "error-reason": "handler-failed",
            "error-type": "builtins.ValueError",
            "error-message": f"order {n} failed",
            "error-attempt": "3",
            "dead-lettered-at": str(time.time()),
        },
    )


def drain(broker: Broker, queue: str) -> list[Envelope]:
    """Take every message off ``queue`` (through plain pika), as envelopes."""
    taken = []
    while (got := broker.get(queue)) is not None:
        taken.append(wire.envelope(got[2], got[1]))
    return taken


def peek_ids(backend: RabbitMQBackend, queue: str) -> list[str]:
    return [envelope.message_id for envelope in backend.dead_letters(queue, 100)]


def test_replay_moves_the_chosen_dead_letters_back_and_leaves_the_others_in_order(
    registry: Registry, uid: str, amqp_url: str, broker: Broker
) -> None:
    bus = shop(registry, uid, amqp_url)
    bus.provision()
    backend = bus.backend
    assert isinstance(backend, RabbitMQBackend)
    queue, dlq = f"svc-{uid}", f"svc-{uid}-dlq"
    letters = [dead_letter(n) for n in range(5)]
    ids = [letter.message_id for letter in letters]
    for letter in letters:
        backend.send(dlq, letter)

    assert backend.replay_dead_letters(queue, message_ids=[ids[3], ids[1], "not-there"]) == [ids[1], ids[3]]
    back = drain(broker, queue)
    assert [e.message_id for e in back] == [ids[1], ids[3]]
    for envelope, original in zip(back, (letters[1], letters[3]), strict=True):
        assert envelope.attempt == 1
        assert envelope.headers == {"tenant": "acme"}  # no error-* nor dead-lettered-at
        assert (envelope.body, envelope.manifest) == (original.body, original.manifest)
    # The others are still there, untouched and in their order; a peek left them too.
    assert peek_ids(backend, queue) == [ids[0], ids[2], ids[4]]
    assert broker.depth(dlq) == 3

    assert backend.replay_dead_letters(queue, message_ids=["nope"]) == []
    assert backend.replay_dead_letters(queue, limit=2) == [ids[0], ids[2]]
    assert [e.message_id for e in drain(broker, queue)] == [ids[0], ids[2]]
    assert peek_ids(backend, queue) == [ids[4]]

    # A message that some other program put there, without our headers, goes back too.
    broker.publish_raw(dlq, b"garbage", pika.BasicProperties(message_id="raw-1", headers={"x-death": []}))
    assert backend.replay_dead_letters(queue) == [ids[4], "raw-1"]
    assert [e.message_id for e in drain(broker, queue)] == [ids[4], "raw-1"]
    assert broker.depth(dlq) == 0
    assert backend.replay_dead_letters(queue) == []
    bus.stop()


def test_purge_deletes_the_dead_letters_and_keeps_the_queue(
    registry: Registry, uid: str, amqp_url: str, broker: Broker
) -> None:
    bus = shop(registry, uid, amqp_url)
    bus.provision()
    backend = bus.backend
    assert isinstance(backend, RabbitMQBackend)
    queue, dlq = f"svc-{uid}", f"svc-{uid}-dlq"
    for n in range(3):
        backend.send(dlq, dead_letter(n))
    backend.send(queue, dead_letter(9))
    assert backend.purge_dead_letters(queue) == 3
    assert broker.depth(dlq) == 0
    assert broker.depth(queue) == 1  # the queue itself is not touched
    assert backend.purge_dead_letters(queue) == 0
    assert backend.purge_dead_letters(f"nothing-{uid}") == 0  # no such dead-letter queue: none
    assert not broker.queue_exists(f"nothing-{uid}-dlq")
    bus.stop()


def test_a_copy_the_queue_refuses_leaves_its_dead_letter_in_place(
    registry: Registry, uid: str, amqp_url: str, broker: Broker
) -> None:
    bus = shop(registry, uid, amqp_url)
    bus.provision()
    backend = bus.backend
    assert isinstance(backend, RabbitMQBackend)
    queue, dlq = f"svc-{uid}", f"svc-{uid}-dlq"
    letters = [dead_letter(n) for n in range(2)]
    for letter in letters:
        backend.send(dlq, letter)
    # The queue now refuses every message (the broker nacks them).
    broker.channel.queue_delete(queue)
    broker.channel.queue_declare(queue, durable=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    with pytest.raises(PublishError, match=r"replayed 0 dead letter\(s\).*2 could not be stored there"):
        backend.replay_dead_letters(queue)
    assert peek_ids(backend, queue) == [letter.message_id for letter in letters]

    broker.channel.queue_delete(queue)
    with pytest.raises(PublishError, match=f"no queue named 'svc-{uid}'"):
        backend.replay_dead_letters(queue)
    assert broker.depth(dlq) == 2
    bus.stop()


def snapshot(uid: str) -> list[Any]:
    """What the broker has of this test, to show that --diff changes nothing."""
    return [
        sorted(str(row) for row in listing(what, *columns) if uid in str(row))
        for what, columns in (
            ("queues", ("name", "arguments", "messages")),
            ("exchanges", ("name", "type")),
            ("bindings", ("source_name", "destination_name", "routing_key")),
        )
    ]


def test_inspect_reports_missing_extra_and_different_and_changes_nothing(
    registry: Registry, uid: str, amqp_url: str, broker: Broker
) -> None:
    bus = shop(registry, uid, amqp_url)
    backend = bus.backend
    assert isinstance(backend, RabbitMQBackend)
    topology = bus.topology()
    queue, dlq = f"svc-{uid}", f"svc-{uid}-dlq"
    orders, payments = f"orders-{uid}", f"payments-{uid}"

    report = backend.inspect(topology)
    assert [str(d) for d in report.missing] == [
        f"topic {orders}",
        f"topic {payments}",
        f"queue {queue}",
        f"dead-letter queue {dlq}",
        f"subscription {orders} -> {queue}",
    ]
    assert report.extra == report.different == ()

    bus.provision()
    assert backend.inspect(topology).in_sync

    ch = broker.channel
    ch.queue_unbind(queue, orders, routing_key="OrderCancelled")
    ch.queue_bind(queue, orders, routing_key="OrderRefunded")
    ch.exchange_declare(f"returns-{uid}", "topic")
    ch.queue_bind(queue, f"returns-{uid}", routing_key="ReturnOpened")
    ch.exchange_delete(payments)
    ch.exchange_declare(payments, "fanout", durable=True)
    ch.queue_delete(dlq)
    ch.queue_declare(dlq, durable=True, arguments={"x-max-length": 10})
    ch.queue_delete(f"{queue}-retry-10s")
    ch.queue_declare(f"{queue}-retry-3s", durable=True, arguments={"x-message-ttl": 3000})
    before = snapshot(uid)

    report = backend.inspect(topology)
    assert str(report).splitlines() == [
        f"service svc-{uid}",
        f"  extra      subscription returns-{uid} -> {queue}: manifests: ReturnOpened",
        f"  extra      retry queue {queue}-retry-3s: x-message-ttl: 3000",
        f"  different  topic {payments}: a durable fanout exchange; eventbus needs a durable topic exchange",
        f"  different  queue {queue}: retry queue {queue}-retry-10s missing",
        f"  different  dead-letter queue {dlq}: x-max-length: plan (not set), broker 10",
        f"  different  subscription {orders} -> {queue}: manifests: "
        "plan only OrderCancelled; broker only OrderRefunded",
        "out of sync: 0 missing, 2 extra, 4 different",
    ]
    assert snapshot(uid) == before, "inspect changed something"

    # A queue that dead-letters elsewhere, and one of another type.
    ch.queue_delete(queue)
    ch.queue_declare(queue, durable=True, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "x"})
    different = {d.name: d.detail for d in backend.inspect(topology).different}
    assert different[queue] == f"dead_letter: plan {dlq}, broker x"
    bus.stop()


def test_inspect_says_what_it_needs_when_rabbitmqctl_is_not_there(
    registry: Registry, uid: str, amqp_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    bus = shop(registry, uid, amqp_url)
    backend = bus.backend
    assert isinstance(backend, RabbitMQBackend)
    with monkeypatch.context() as patch:
        patch.setenv("PATH", str(tmp_path))
        with pytest.raises(InspectionError, match="reads the broker's listings with rabbitmqctl, which is not on PATH"):
            backend.inspect(bus.topology())


def test_a_replay_right_after_a_scan_still_finds_every_dead_letter(
    registry: Registry, uid: str, amqp_url: str, broker: Broker
) -> None:
    bus = shop(registry, uid, amqp_url)
    bus.provision()
    backend = bus.backend
    assert isinstance(backend, RabbitMQBackend)
    queue, dlq = f"svc-{uid}", f"svc-{uid}-dlq"
    letters = [dead_letter(n) for n in range(2000)]
    assert not backend._publisher.publish([Outgoing("", dlq, letter, mandatory=True) for letter in letters])
    # The first one gives every dead letter back as it closes; the broker counts them back in a while.
    assert backend.replay_dead_letters(queue, message_ids=["none of them"]) == []
    assert backend.replay_dead_letters(queue) == [letter.message_id for letter in letters]
    assert broker.depth(dlq) == 0
    assert broker.depth(queue) == 2000
    bus.stop()
