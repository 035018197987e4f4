"""Publishing on SNS/SQS: batches, failures surfaced, size limits, the attribute mapping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest
from sqs_helpers import receive_all

from eventbus import Bus, Envelope, PublishError, Registry, wait_until
from eventbus import envelope as h
from eventbus.backends.sqs import BatchPublishError, SqsBackend, wire
from eventbus.backends.sqs.backend import batch_failures

pytestmark = pytest.mark.sqs


def _registry() -> Registry:
    registry = Registry()

    @registry.message(topic="orders")
    @attrs.frozen
    class Placed:
        order_id: str
        note: str = ""

    @registry.message(topic="refunds")
    @attrs.frozen
    class Refunded:
        order_id: str

    @registry.subscribe(Placed, Refunded)
    def handle(event: Any) -> None: ...

    return registry


def _types(registry: Registry) -> dict[str, type[Any]]:
    return {spec.name: spec.cls for spec in registry.messages()}


def test_publish_many_batches_and_delivers_everything(make_bus: Callable[..., Bus], prefix: str, sqs: Any) -> None:
    registry = _registry()
    types = _types(registry)
    bus = make_bus("billing", registry)
    bus.provision()

    ids = bus.publish_many([types["Placed"](f"o-{i}") for i in range(23)] + [types["Refunded"]("o-1")])

    messages = receive_all(sqs, f"{prefix}billing")
    assert sorted(m["MessageAttributes"][h.MESSAGE_ID]["StringValue"] for m in messages) == sorted(ids)


def test_batch_failures_name_the_messages_not_published(
    make_bus: Callable[..., Bus], prefix: str, sqs: Any, sns: Any
) -> None:
    registry = _registry()
    types = _types(registry)
    bus = make_bus("billing", registry)
    bus.provision()
    refunds = next(t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(f":{prefix}refunds"))
    sns.delete_topic(TopicArn=refunds)  # gone after the publisher looked it up

    placed = [types["Placed"](f"o-{i}") for i in range(12)]
    refunded = [types["Refunded"](f"r-{i}") for i in range(3)]
    with pytest.raises(BatchPublishError) as raised:
        bus.publish_many([*placed[:6], *refunded, *placed[6:]])

    error = raised.value
    assert isinstance(error, PublishError)
    assert [(f.topic, f.envelope.manifest) for f in error.failed] == [("refunds", "Refunded")] * 3
    assert all("NotFound" in f.reason for f in error.failed)
    assert "3 of 15 messages were not published" in str(error)
    # The others were published.
    assert len(receive_all(sqs, f"{prefix}billing")) == 12


def test_batch_failures_trust_only_explicit_successes() -> None:
    chunk = [wire.encode(Envelope(b"{}", f"id-{i}", "Placed"), fifo=False) for i in range(4)]
    failed = batch_failures(
        "orders",
        chunk,
        accepted={"0", "2"},
        failed=[{"Id": "1", "Code": "InternalError", "Message": "try later", "SenderFault": False}],
    )
    assert [(f.envelope.message_id, f.reason) for f in failed] == [
        ("id-1", "InternalError: try later"),
        ("id-3", "the broker did not confirm it"),
    ]


def test_oversized_messages_are_refused_with_their_type_and_size(make_bus: Callable[..., Bus], sqs: Any) -> None:
    registry = _registry()
    types = _types(registry)
    bus = make_bus("billing", registry)
    bus.provision()
    big = types["Placed"]("o-1", note="x" * 300_000)

    with pytest.raises(PublishError, match=r"Placed \w+ is 3\d{5} bytes .* over the 262144-byte limit"):
        bus.publish(big)
    with pytest.raises(PublishError, match="Placed"):
        bus.publish_many([types["Placed"]("o-2"), big])  # checked before anything is sent
    with pytest.raises(PublishError, match="Placed"):
        bus.send("billing", big)


def test_send_goes_straight_to_a_queue(make_bus: Callable[..., Bus], prefix: str, sqs: Any) -> None:
    registry = _registry()
    types = _types(registry)
    bus = make_bus("billing", registry)
    bus.provision()

    message_id = bus.send("billing", types["Refunded"]("o-1"))

    (message,) = receive_all(sqs, f"{prefix}billing")
    assert message["MessageAttributes"][h.MESSAGE_ID]["StringValue"] == message_id
    with pytest.raises(PublishError, match=f"SQS queue {prefix}nowhere does not exist"):
        bus.send("nowhere", types["Refunded"]("o-1"))


# Pickle needs a class it can import by name: this one lives at module level, in its own registry.
blobs = Registry()


@blobs.message(topic="blobs", serializer="pickle")
@attrs.frozen
class Blob:
    data: bytes


def test_binary_bodies_travel_base64_encoded(make_bus: Callable[..., Bus], prefix: str, sqs: Any) -> None:
    got: list[Blob] = []

    @blobs.subscribe(Blob)
    def keep(blob: Blob) -> None:
        got.append(blob)

    bus = make_bus("store", blobs, allow_pickle=True)
    bus.provision()
    bus.publish(Blob(bytes(range(256))))
    (message,) = receive_all(sqs, f"{prefix}store")
    assert message["MessageAttributes"]["body-encoding"]["StringValue"] == "base64"

    bus.start()
    bus.publish(Blob(bytes(range(256))))
    wait_until(lambda: got == [Blob(bytes(range(256)))], 20)


def test_every_field_fits_in_ten_attributes() -> None:
    envelope = Envelope(
        body=b'{"a": 1}',
        message_id="m-1",
        manifest="Placed.v2",
        correlation_id="c-1",
        causation_id="p-1",
        timestamp=1.5,
        attempt=3,
        group_id="g-1",
        headers={"tenant": "acme", h.ERROR_REASON: "handler-failed", h.ERROR_MESSAGE: ""},
    )
    for fifo in (False, True):
        outgoing = wire.encode(envelope, fifo=fifo)
        assert len(outgoing.attributes) <= 10
        assert all(value["StringValue"] for value in outgoing.attributes.values())  # SQS refuses empty values
        message = {
            "MessageId": "sqs-id",
            "Body": outgoing.body,
            "MessageAttributes": outgoing.attributes,
            "Attributes": {"ApproximateReceiveCount": "3", **({"MessageGroupId": "g-1"} if fifo else {})},
        }
        assert wire.decode(message, count_attempts=True) == envelope
    assert wire.encode(envelope, fifo=True).fifo_arguments() == {
        "MessageGroupId": "g-1",
        "MessageDeduplicationId": "m-1",
    }


@pytest.mark.parametrize(
    "message",
    [
        {},
        {"Body": "x", "MessageAttributes": {"headers": {"DataType": "String", "StringValue": "[1, 2"}}},
        {"Body": "x", "MessageAttributes": {"manifest": {"DataType": "Binary", "BinaryValue": b"\xff"}}},
        {"Body": "%%%", "MessageAttributes": {"body-encoding": {"DataType": "String", "StringValue": "base64"}}},
        {"Body": '{"Type": "Notification", "TopicArn": "t", "MessageAttributes": {"x": 5}}'},
        {"Body": "x", "Attributes": {"ApproximateReceiveCount": "many"}},
    ],
)
def test_garbage_from_the_wire_never_raises(message: dict[str, Any]) -> None:
    envelope = wire.decode(message, count_attempts=True)
    assert envelope.message_id


def test_dead_letters_of_a_missing_queue_are_empty(make_bus: Callable[..., Bus]) -> None:
    backend = make_bus("billing", _registry()).backend
    assert isinstance(backend, SqsBackend)
    assert backend.dead_letters("never-provisioned", 10) == []
