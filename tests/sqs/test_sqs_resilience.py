"""When things go wrong: lost connections, crashing delivery handlers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
from sqs_helpers import Proxy, queue_counts

from eventbus import Bus, Registry, wait_until
from eventbus.backends.base import Delivery
from eventbus.backends.sqs import SqsBackend, SqsConsumer, SqsDelivery

pytestmark = pytest.mark.sqs


def _registry(got: list[Any]) -> Registry:
    registry = Registry()

    @registry.message(topic="orders")
    @attrs.frozen
    class Placed:
        order_id: str

    @registry.subscribe(Placed)
    def handle(event: Placed) -> None:
        got.append(event.order_id)

    return registry


@pytest.fixture
def proxy(endpoint: str) -> Iterator[Proxy]:
    port = urlsplit(endpoint).port
    assert port is not None
    proxy = Proxy(port)
    yield proxy
    proxy.down()


def test_consumers_resume_after_the_connection_is_lost(
    make_bus: Callable[..., Bus], url_for: Callable[..., str], proxy: Proxy, prefix: str, sqs: Any
) -> None:
    got: list[Any] = []
    registry = _registry(got)
    (placed,) = [spec.cls for spec in registry.messages()]
    # A short visibility timeout: a receive cut mid-flight hides its message until then.
    bus = make_bus("billing", registry, url_for(endpoint=f"http://127.0.0.1:{proxy.port}", visibility=2)).start()
    direct = make_bus("billing", registry)  # publishes around the proxy
    bus.publish(placed("before"))
    wait_until(lambda: got == ["before"], 20)
    wait_until(lambda: queue_counts(sqs, f"{prefix}billing") == (0, 0), 10)  # deleted

    proxy.down()
    direct.publish(placed("during"))
    wait_until(lambda: sum(queue_counts(sqs, f"{prefix}billing")) == 1, 10)
    assert got == ["before"]
    proxy.up()

    wait_until(lambda: got == ["before", "during"], 45)
    bus.publish(placed("after"))
    wait_until(lambda: got == ["before", "during", "after"], 20)


def test_a_crashing_delivery_handler_leaves_the_message_to_the_redrive_policy(
    make_bus: Callable[..., Bus], url_for: Callable[..., str], prefix: str, sqs: Any
) -> None:
    got: list[Any] = []
    registry = _registry(got)
    (placed,) = [spec.cls for spec in registry.messages()]
    bus = make_bus("billing", registry, url_for(visibility=1, max_receives=2))
    bus.provision()
    backend = bus.backend
    assert isinstance(backend, SqsBackend)
    calls: list[int] = []
    lock = threading.Lock()

    def crash(delivery: Delivery) -> None:
        with lock:
            calls.append(delivery.envelope.attempt)
        raise RuntimeError("the dead-letter queue is unreachable, say")

    consumer = backend.consume("billing", crash, concurrency=1, prefetch=1)
    try:
        bus.publish(placed("o-1"))
        # SQS moves it to the dead-letter queue itself after max_receives receives.
        wait_until(lambda: queue_counts(sqs, f"{prefix}billing-dlq")[0] == 1, 30)
    finally:
        consumer.stop(5)
    assert calls == [1, 2]
    assert queue_counts(sqs, f"{prefix}billing") == (0, 0)


def test_deletes_sqs_refuses_are_reported(
    make_bus: Callable[..., Bus], prefix: str, sqs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[Any] = []
    registry = _registry(got)
    bus = make_bus("billing", registry)
    bus.provision()
    backend = bus.backend
    assert isinstance(backend, SqsBackend)
    consumer = backend.consume("billing", bus.dispatchers()["billing"], concurrency=1, prefetch=1)
    assert isinstance(consumer, SqsConsumer)
    try:
        url = sqs.get_queue_url(QueueName=f"{prefix}billing")["QueueUrl"]
        manifest = {"manifest": {"DataType": "String", "StringValue": "Placed"}}
        sqs.send_message(QueueUrl=url, MessageBody='{"order_id": "o-1"}', MessageAttributes=manifest)
        wait_until(lambda: got == ["o-1"], 20)
        # A receipt handle SQS no longer accepts, as after a visibility timeout ran out.
        _, envelope = bus._marshaller.encode(_placed(registry))
        stale = SqsDelivery(consumer, "not-a-receipt-handle", envelope, 10)
        with caplog.at_level(logging.WARNING, logger="eventbus.sqs"):
            consumer._delete([stale])
    finally:
        consumer.stop(5)
    assert "could not delete handled message" in caplog.text
    assert "ReceiptHandleIsInvalid" in caplog.text


def _placed(registry: Registry) -> Any:
    (placed,) = [spec.cls for spec in registry.messages()]
    return placed("o-2")
