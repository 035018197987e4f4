from __future__ import annotations

import threading
import time
from typing import Any

import attrs
import pytest
from rabbitmq_support import Broker

from eventbus import Bus, Envelope, PublishError, Registry, wait_until
from eventbus.backends.rabbitmq import RabbitMQBackend, wire
from eventbus.topology import QueuePlan, Subscription, Topology

pytestmark = pytest.mark.rabbitmq


def small_topology(uid: str) -> Topology:
    queue = f"inbox-{uid}"
    return Topology(
        service=queue,
        topics=(f"events-{uid}",),
        queues=(QueuePlan(queue, f"{queue}-dlq"),),
        subscriptions=(Subscription(f"events-{uid}", queue, ("Thing", "Other")),),
    )


def an_envelope(manifest: str = "Thing", **fields: Any) -> Envelope:
    return Envelope(
        body=b'{"n": 1}',
        message_id=fields.pop("message_id", f"id-{time.monotonic_ns()}"),
        manifest=manifest,
        correlation_id="flow-1",
        causation_id="cause-1",
        timestamp=1_700_000_000.25,
        attempt=2,
        headers={"tenant": "acme"},
        **fields,
    )


def test_envelope_fields_become_amqp_properties_and_come_back(uid: str, amqp_url: str, broker: Broker) -> None:
    backend = RabbitMQBackend.from_url(amqp_url + "&retry_delays=1")
    backend.provision(small_topology(uid))
    sent = an_envelope()
    backend.publish(f"events-{uid}", sent)  # returns once confirmed: the message is there now
    got = broker.get(f"inbox-{uid}")
    assert got is not None
    method, properties, body = got
    assert method.routing_key == "Thing"
    assert properties.message_id == sent.message_id
    assert properties.type == "Thing"
    assert properties.correlation_id == "flow-1"
    assert properties.content_type == "application/json"
    assert properties.timestamp == 1_700_000_000
    assert properties.delivery_mode == 2  # persistent
    assert properties.headers["causation-id"] == "cause-1"
    assert properties.headers["attempt"] == "2"
    assert properties.headers["tenant"] == "acme"
    assert "message-id" not in properties.headers
    assert wire.envelope(body, properties) == sent
    backend.close()


def test_only_bound_manifests_arrive(uid: str, amqp_url: str, broker: Broker) -> None:
    backend = RabbitMQBackend.from_url(amqp_url + "&retry_delays=1")
    backend.provision(small_topology(uid))
    backend.publish_many([(f"events-{uid}", an_envelope(m)) for m in ("Thing", "Unwanted", "Other")])
    assert broker.depth(f"inbox-{uid}") == 2
    backend.close()


def test_publishing_to_a_topic_nobody_provisioned_is_confirmed(uid: str, amqp_url: str, broker: Broker) -> None:
    backend = RabbitMQBackend.from_url(amqp_url)
    backend.publish(f"lonely-{uid}", an_envelope())  # routed nowhere, like a topic without subscribers
    assert broker.exchange_exists(f"lonely-{uid}")
    backend.close()


def test_send_goes_to_the_queue_and_an_unknown_queue_raises(uid: str, amqp_url: str, broker: Broker) -> None:
    backend = RabbitMQBackend.from_url(amqp_url + "&retry_delays=1")
    backend.provision(small_topology(uid))
    backend.send(f"inbox-{uid}", an_envelope("Anything"))
    assert broker.depth(f"inbox-{uid}") == 1
    with pytest.raises(PublishError, match=rf"to queue 'nowhere-{uid}' failed: no queue took it .*NO_ROUTE"):
        backend.send(f"nowhere-{uid}", an_envelope())
    backend.send(f"inbox-{uid}", an_envelope("Again"))  # the channel is still fine
    assert broker.depth(f"inbox-{uid}") == 2
    backend.close()


def test_publish_many_names_the_entries_that_failed(uid: str, amqp_url: str, broker: Broker) -> None:
    backend = RabbitMQBackend.from_url(amqp_url + "&retry_delays=1")
    backend.provision(small_topology(uid))
    broker.channel.exchange_declare(f"taken-{uid}", "fanout")  # not a topic exchange: cannot be used
    batch = [(f"events-{uid}", an_envelope(message_id=f"ok-{i}")) for i in range(50)]
    batch.insert(10, (f"taken-{uid}", an_envelope(message_id="bad-1")))
    batch.insert(30, (f"taken-{uid}", an_envelope(message_id="bad-2")))
    with pytest.raises(PublishError) as info:
        backend.publish_many(batch)
    text = str(info.value)
    assert text.startswith("2 of 52 messages were not confirmed")
    assert "#10 Thing bad-1" in text
    assert "#30 Thing bad-2" in text
    assert "inequivalent arg 'type'" in text
    assert broker.depth(f"inbox-{uid}") == 50  # every other message made it
    backend.close()


def test_eight_threads_publishing_at_once_lose_nothing(
    registry: Registry, uid: str, amqp_url: str, broker: Broker
) -> None:
    @registry.message(topic=f"ticks-{uid}")
    @attrs.frozen
    class Tick:
        thread: int
        n: int

    seen: set[tuple[int, int]] = set()
    lock = threading.Lock()

    @registry.subscribe(Tick)
    def count(tick: Tick) -> None:
        with lock:
            seen.add((tick.thread, tick.n))

    bus = Bus(service=f"counter-{uid}", url=amqp_url + "&retry_delays=1", registry=registry, concurrency=4)
    bus.start()
    errors: list[BaseException] = []

    def publisher(thread: int) -> None:
        try:
            for n in range(250):
                bus.publish(Tick(thread, n))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    wait_until(lambda: len(seen) == 2000, 30, message="every tick handled")
    assert seen == {(t, n) for t in range(8) for n in range(250)}
    bus.stop()
    assert broker.depth(f"counter-{uid}") == 0


def test_close_releases_everything_and_the_backend_can_be_used_again(uid: str, amqp_url: str, broker: Broker) -> None:
    backend = RabbitMQBackend.from_url(amqp_url + "&retry_delays=1")
    backend.provision(small_topology(uid))
    backend.publish(f"events-{uid}", an_envelope())
    before = {t.name for t in threading.enumerate()}
    assert "eventbus-amqp-publish" in before
    backend.close()
    assert "eventbus-amqp-publish" not in {t.name for t in threading.enumerate()}
    backend.publish(f"events-{uid}", an_envelope())  # reconnects lazily
    assert broker.depth(f"inbox-{uid}") == 2
    backend.close()


def test_a_publish_that_cannot_be_confirmed_raises() -> None:
    # Nothing listens on port 1: a broker that was never reached fails the publish at once.
    backend = RabbitMQBackend.from_url("amqp://guest:guest@127.0.0.1:1/%2F?connect_timeout=30")
    start = time.monotonic()
    with pytest.raises(
        PublishError, match=r"the broker is unreachable \(.*ConnectionRefused.*\); it was not published"
    ):
        backend.publish("anything", an_envelope())
    assert time.monotonic() - start < 3
    backend.close()
