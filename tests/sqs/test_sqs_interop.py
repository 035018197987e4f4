"""Interop with plain boto3, using only the attributes documented in docs/backends/sqs.md."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from sqs_helpers import queue_url, receive_all

from eventbus import Bus, Context, Registry, wait_until

pytestmark = pytest.mark.sqs


def _registry(got: list[tuple[Any, Context]]) -> Registry:
    registry = Registry()

    @registry.message(topic="orders")
    @attrs.frozen
    class Placed:
        order_id: str

    @registry.subscribe(Placed)
    def handle(event: Placed, ctx: Context) -> None:
        got.append((event, ctx))

    return registry


def test_a_plain_consumer_reads_what_eventbus_publishes(make_bus: Callable[..., Bus], prefix: str, sqs: Any) -> None:
    registry = _registry([])
    (placed,) = [spec.cls for spec in registry.messages()]
    bus = make_bus("billing", registry)
    bus.provision()

    message_id = bus.publish(placed("o-1"), headers={"tenant": "acme"}, correlation_id="flow-1")

    (message,) = receive_all(sqs, f"{prefix}billing")
    attributes = {name: value["StringValue"] for name, value in message["MessageAttributes"].items()}
    assert all(value["DataType"] == "String" for value in message["MessageAttributes"].values())
    assert json.loads(message["Body"]) == {"order_id": "o-1"}
    assert attributes.pop("manifest") == "Placed"
    assert attributes.pop("message-id") == message_id
    assert attributes.pop("content-type") == "application/json"
    assert attributes.pop("serializer") == "json"
    assert attributes.pop("correlation-id") == "flow-1"
    assert attributes.pop("attempt") == "1"
    assert float(attributes.pop("timestamp")) > 0
    assert json.loads(attributes.pop("headers")) == {"tenant": "acme"}
    assert attributes == {}


def test_eventbus_handles_what_a_plain_producer_sends(
    make_bus: Callable[..., Bus], prefix: str, sqs: Any, sns: Any
) -> None:
    got: list[tuple[Any, Context]] = []
    bus = make_bus("billing", _registry(got)).start()
    topic_arn = next(t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(f":{prefix}orders"))

    def string(value: str) -> dict[str, str]:
        return {"DataType": "String", "StringValue": value}

    # Through SNS, with the documented attributes.
    sns.publish(
        TopicArn=topic_arn,
        Message=json.dumps({"order_id": "o-1"}),
        MessageAttributes={
            "manifest": string("Placed"),
            "message-id": string("plain-1"),
            "content-type": string("application/json"),
            "correlation-id": string("flow-9"),
            "headers": string(json.dumps({"tenant": "acme"})),
        },
    )
    # Another type on the same topic: the filter policy keeps it out of the queue.
    sns.publish(TopicArn=topic_arn, Message="{}", MessageAttributes={"manifest": string("Unrelated")})
    # Straight to the queue with nothing but the manifest.
    sqs.send_message(
        QueueUrl=queue_url(sqs, f"{prefix}billing"),
        MessageBody=json.dumps({"order_id": "o-2"}),
        MessageAttributes={"manifest": string("Placed")},
    )

    wait_until(lambda: len(got) == 2, 20)
    by_order = {event.order_id: ctx for event, ctx in got}
    first, second = by_order["o-1"], by_order["o-2"]
    assert (first.message_id, first.correlation_id, first.envelope.headers) == ("plain-1", "flow-9", {"tenant": "acme"})
    assert first.envelope.attempt == 1
    # Without a message-id, SQS's own message id stands in (stable across redeliveries).
    assert second.message_id
    assert second.correlation_id == second.message_id
    assert bus.dead_letters() == []
