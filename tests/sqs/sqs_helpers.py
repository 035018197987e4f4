"""Helpers for the sqs:// tests: looking at queues with a plain boto3 client."""

from __future__ import annotations

from typing import Any


def queue_url(sqs: Any, name: str) -> str:
    """The URL of the physical queue ``name``."""
    return str(sqs.get_queue_url(QueueName=name)["QueueUrl"])


def queue_counts(sqs: Any, name: str) -> tuple[int, int]:
    """(visible, in flight) messages of queue ``name``."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url(sqs, name),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def receive_all(sqs: Any, name: str, *, wait: int = 1) -> list[dict[str, Any]]:
    """Receive and delete every message now in queue ``name``."""
    url = queue_url(sqs, name)
    messages: list[dict[str, Any]] = []
    while True:
        response = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        batch = response.get("Messages", [])
        if not batch:
            return messages
        messages += batch
        sqs.delete_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)]
        )
        wait = 0
