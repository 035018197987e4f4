"""Replaying and purging dead letters on SQS, with plain receive, send and delete calls.

SQS's own redrive (StartMessageMoveTask) moves everything or nothing and
sets no attributes, so a replay does it by hand: it receives dead letters
(hiding them), sends the chosen ones' copies to the queue in batches of 10
and deletes a dead letter only once SendMessageBatch accepted its copy: a
crash in between leaves a duplicate, never a loss. The dead letters it skips
stay hidden until the end, so each is looked at once, and are then made
visible again, untouched. It ends when the dead-letter queue has nothing
new to show, or once it has looked at what the queue held when it started
and twice more at what was left then, so it ends even while dead letters
keep arriving.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

from eventbus.backends.base import replayed
from eventbus.backends.sqs import wire
from eventbus.backends.sqs.consumer import AWS_ERRORS, BATCH
from eventbus.envelope import Envelope
from eventbus.errors import PublishError
from eventbus.specs import is_fifo

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        DeleteMessageBatchRequestEntryTypeDef,
        MessageTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

log = logging.getLogger("eventbus.sqs")

#: Seconds a dead letter stays hidden while a replay or purge holds it (longer than one batch takes).
HOLD = 120
#: How many times a replay or purge looks again for dead letters that came after it counted them.
RECHECKS = 2


def replay(
    sqs: SQSClient,
    *,
    queue: str,
    queue_url: str,
    dead_letter_url: str,
    wait: int,
    limit: int | None,
    message_ids: Collection[str] | None,
) -> list[str]:
    """Move dead letters back to ``queue`` (at ``queue_url``), oldest first as SQS hands them out; their ids."""
    wanted = None if message_ids is None else set(message_ids)
    moved: list[str] = []
    skipped: dict[str, str] = {}  # SQS message id -> receipt handle, of dead letters left alone
    try:
        for received in _receive(sqs, dead_letter_url, wait):
            chosen: list[tuple[MessageTypeDef, Envelope]] = []
            for message in received:
                envelope = wire.decode(message, count_attempts=False)
                full = limit is not None and len(moved) + len(chosen) >= limit
                if full or (wanted is not None and envelope.message_id not in wanted):
                    skipped[message.get("MessageId", "")] = message.get("ReceiptHandle", "")
                else:
                    chosen.append((message, envelope))
            moved += _move(sqs, queue, queue_url, dead_letter_url, chosen, skipped)
            if limit is not None and len(moved) >= limit:
                break
    finally:
        _show_again(sqs, dead_letter_url, list(skipped.values()))
    return moved


def purge(sqs: SQSClient, dead_letter_url: str, wait: int) -> int:
    """Receive and delete every dead letter that shows up; return how many were deleted.

    (PurgeQueue would not say how many, and SQS allows it once a minute.)
    """
    deleted = 0
    for received in _receive(sqs, dead_letter_url, wait):
        deleted += len(_delete(sqs, dead_letter_url, received))
    return deleted


def _receive(sqs: SQSClient, url: str, wait: int) -> Iterator[list[MessageTypeDef]]:
    """Batches of messages not seen before, hidden for :data:`HOLD` seconds, until no new one comes.

    It stops too once it has looked at as many as the queue showed at the
    start, and then twice more at as many as it shows when that is done
    (what it holds is hidden, so that is what is left): the counts are
    approximate, and dead letters may keep arriving.
    """
    seen: set[str] = set()
    budget = 0
    for _ in range(1 + RECHECKS):
        budget += _visible(sqs, url) + BATCH  # a margin: SQS's counts are approximate
        while len(seen) < budget:
            response = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=BATCH,
                WaitTimeSeconds=min(wait, 1),
                VisibilityTimeout=HOLD,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["MessageGroupId"],
            )
            fresh = [m for m in response.get("Messages", []) if m.get("MessageId", "") not in seen]
            if not fresh:
                return
            seen.update(m.get("MessageId", "") for m in fresh)
            yield fresh


def _visible(sqs: SQSClient, url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attributes.get("ApproximateNumberOfMessages", "0"))


def _move(
    sqs: SQSClient,
    queue: str,
    queue_url: str,
    dead_letter_url: str,
    chosen: list[tuple[MessageTypeDef, Envelope]],
    skipped: dict[str, str],
) -> list[str]:
    """Send the copies of ``chosen`` in one batch, then delete the dead letters whose copy SQS accepted."""
    if not chosen:
        return []
    fifo = is_fifo(queue)
    entries: list[SendMessageBatchRequestEntryTypeDef] = []
    for message, envelope in chosen:
        # On FIFO the copy needs its own deduplication id: the message id may still be in the 5-minute window.
        key = f"replay|{message.get('MessageId', '')}".encode()
        outgoing = wire.encode(replayed(envelope), fifo=fifo, dedup_id=hashlib.sha256(key).hexdigest())
        entry: SendMessageBatchRequestEntryTypeDef = {
            "Id": str(len(entries)),
            "MessageBody": outgoing.body,
            "MessageAttributes": outgoing.attributes,
        }
        if outgoing.group_id is not None and outgoing.dedup_id is not None:
            entry["MessageGroupId"] = outgoing.group_id
            entry["MessageDeduplicationId"] = outgoing.dedup_id
        entries.append(entry)
    try:
        response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        accepted = {entry.get("Id") for entry in response.get("Successful", [])}
        reasons = {e.get("Id"): f"{e.get('Code', 'error')}: {e.get('Message', '')}" for e in response.get("Failed", [])}
    except AWS_ERRORS as exc:
        accepted, reasons = set(), {entry["Id"]: str(exc) for entry in entries}
    # Only an explicit success counts: an entry listed nowhere was not stored.
    refused = [i for i in range(len(chosen)) if str(i) not in accepted or str(i) in reasons]
    stored = [pair for i, pair in enumerate(chosen) if i not in refused]
    gone = _delete(sqs, dead_letter_url, [message for message, _ in stored])
    for message, envelope in stored:
        if message.get("MessageId", "") not in gone:
            log.warning(
                "replayed %s to %s but could not delete its dead letter: it may come again", envelope.message_id, queue
            )
    if refused:
        for i in refused:
            skipped[chosen[i][0].get("MessageId", "")] = chosen[i][0].get("ReceiptHandle", "")
        first = refused[0]
        raise PublishError(
            f"{len(refused)} dead letter(s) could not be copied to queue {queue} and stay in its dead-letter queue "
            f"(the first, {chosen[first][1].message_id}: {reasons.get(str(first), 'not confirmed')}); "
            f"{len(stored)} of the same batch were replayed"
        )
    return [envelope.message_id for _, envelope in stored]


def _delete(sqs: SQSClient, url: str, messages: list[MessageTypeDef]) -> set[str]:
    """Delete ``messages`` (received from ``url``); return the SQS ids of those deleted."""
    gone: set[str] = set()
    for start in range(0, len(messages), BATCH):
        batch = messages[start : start + BATCH]
        entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
            {"Id": str(i), "ReceiptHandle": m.get("ReceiptHandle", "")} for i, m in enumerate(batch)
        ]
        try:
            response = sqs.delete_message_batch(QueueUrl=url, Entries=entries)
        except AWS_ERRORS as exc:
            log.warning("could not delete %d message(s) from %s: %s", len(batch), url, exc)
            continue
        gone.update(batch[int(e["Id"])].get("MessageId", "") for e in response.get("Successful", []) if "Id" in e)
    return gone


def _show_again(sqs: SQSClient, url: str, receipts: list[str]) -> None:
    for start in range(0, len(receipts), BATCH):
        entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
            {"Id": str(i), "ReceiptHandle": receipt, "VisibilityTimeout": 0}
            for i, receipt in enumerate(receipts[start : start + BATCH])
        ]
        try:
            sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)
        except AWS_ERRORS as exc:
            log.warning(
                "could not make %d skipped dead letter(s) visible again (%s); they are in %ds", len(entries), exc, HOLD
            )
