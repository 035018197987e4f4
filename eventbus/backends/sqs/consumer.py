"""Consuming one SQS queue.

A poller thread long-polls for up to 10 messages at a time, as long as
fewer than ``prefetch`` are held; worker threads run the handler; a keeper
thread deletes settled messages in batches of up to 10 and keeps extending
the visibility timeout of every held message, so that a slow handler's
message is not delivered again while the handler runs.

On a FIFO queue one receive may bring several messages of one message
group: they are handled one after the other, in order, and when one of
them is retried the ones behind it are returned to the queue, where SQS
keeps them behind it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from queue import Empty, Queue
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from eventbus.backends.base import DeliveryHandler
from eventbus.backends.sqs import wire
from eventbus.envelope import Envelope
from eventbus.specs import is_fifo

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        DeleteMessageBatchRequestEntryTypeDef,
        MessageTypeDef,
    )

log = logging.getLogger("eventbus.sqs")

AWS_ERRORS = (BotoCoreError, ClientError)
#: The most messages SQS returns, deletes or changes per call.
BATCH = 10
#: SQS hides a message for at most 12 hours after it was received.
MAX_VISIBILITY = 12 * 3600
#: How long a delete waits for others to share its batch.
FLUSH_INTERVAL = 0.02
SYSTEM_ATTRIBUTES: list[Any] = ["ApproximateReceiveCount", "MessageGroupId", "SentTimestamp"]


class DeadLetterSender(Protocol):
    """Where deliveries send their dead letters (the backend)."""

    def send_dead_letter(self, queue: str, envelope: Envelope) -> None:
        """Store ``envelope`` on the dead-letter queue of ``queue``; raise if not accepted."""
        ...


class SqsDelivery:
    """A message received from an SQS queue."""

    __slots__ = (
        "_consumer",
        "envelope",
        "outcome",
        "queue",
        "receipt",
        "received_at",
        "settled",
        "started",
        "visible_until",
    )

    def __init__(self, consumer: SqsConsumer, receipt: str, envelope: Envelope, visibility: int) -> None:
        self._consumer = consumer
        self.queue = consumer.queue
        self.envelope = envelope
        self.receipt = receipt
        self.received_at = time.monotonic()
        self.visible_until = self.received_at + visibility
        self.settled = False
        self.started = False
        self.outcome = ""  # ack, retry or dead_letter once settled by the handler

    @property
    def group(self) -> str:
        """The FIFO message group ('' on standard queues)."""
        return self.envelope.group_id or ""

    def ack(self) -> None:
        """Handled: delete the message (batched with others)."""
        self._consumer._settle(self, "ack")
        self._consumer._delete_later(self)

    def retry(self, envelope: Envelope, delay: float) -> None:
        """Make the message visible again after ``delay`` seconds (at most 12 hours after it was received).

        SQS counts the receives, so the next delivery's attempt is one more.
        """
        self._consumer._retry(self, delay)

    def dead_letter(self, envelope: Envelope) -> None:
        """Store ``envelope`` on the dead-letter queue, then delete the message."""
        if self.settled:
            raise RuntimeError(f"message {self.envelope.message_id} was already settled")
        self._consumer._dead_letters.send_dead_letter(self.queue, envelope)
        self._consumer._settle(self, "dead_letter")
        self._consumer._delete_later(self)


class SqsConsumer:
    """Background consumption of one SQS queue (see the module docstring)."""

    def __init__(
        self,
        sqs: SQSClient,
        *,
        queue: str,
        url: str,
        handler: DeliveryHandler,
        dead_letters: DeadLetterSender,
        concurrency: int,
        prefetch: int,
        wait: int,
        visibility: int,
    ) -> None:
        self.queue = queue
        self._sqs = sqs
        self._url = url
        self._handler = handler
        self._dead_letters = dead_letters
        self._wait = wait
        self._visibility = visibility
        self._capacity = max(prefetch, concurrency, 1)
        self._fifo = is_fifo(queue)
        # FIFO: message groups being handled -> their messages waiting behind; guarded by _changed
        self._groups: dict[str, deque[SqsDelivery]] = {}
        self._ready: Queue[SqsDelivery | None] = Queue()
        self._deletes: Queue[SqsDelivery | None] = Queue()
        self._held: dict[str, SqsDelivery] = {}  # received, not settled; guarded by _changed
        self._changed = threading.Condition()
        self._visibility_lock = threading.Lock()  # one visibility change at a time
        self._stopping = threading.Event()
        self._closing = threading.Event()
        self._stopped = False
        self._poller = self._thread(self._poll, "poll")
        self._keeper = self._thread(self._keep, "keep")
        self._workers = [self._thread(self._work, f"work-{i}") for i in range(concurrency)]

    def _thread(self, target: Any, role: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=f"eventbus-sqs-{self.queue}-{role}", daemon=True)
        thread.start()
        return thread

    # -- receiving ----------------------------------------------------------

    def _poll(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            room = self._room()
            if not room:
                continue
            try:
                response = self._sqs.receive_message(
                    QueueUrl=self._url,
                    MaxNumberOfMessages=room,
                    WaitTimeSeconds=self._wait,
                    VisibilityTimeout=self._visibility,
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=SYSTEM_ATTRIBUTES,
                )
            except Exception as exc:  # never let the poller die: the queue would go silent
                failures += 1
                delay = min(0.5 * 2**failures, 30.0)
                log.warning(
                    "receiving from %s failed (%s); trying again in %.1fs",
                    self.queue,
                    exc,
                    delay,
                    exc_info=not isinstance(exc, AWS_ERRORS),
                )
                self._stopping.wait(delay)
                continue
            failures = 0
            deliveries = [self._track(message) for message in response.get("Messages", [])]
            if self._stopping.is_set():
                self._release(deliveries)
                return
            for delivery in self._startable(deliveries):
                self._ready.put(delivery)

    def _room(self) -> int:
        """How many messages to ask for; waits (briefly) until a useful batch fits."""
        threshold = max(min(BATCH, self._capacity) // 2, 1)
        with self._changed:
            room = self._capacity - len(self._held)
            if room < threshold:
                self._changed.wait(0.5)
                return 0
            return min(room, BATCH)

    def _startable(self, deliveries: list[SqsDelivery]) -> list[SqsDelivery]:
        """The deliveries workers may start now; on FIFO, later ones of a busy group wait their turn."""
        if not self._fifo:
            return deliveries
        ready = []
        with self._changed:
            for delivery in deliveries:
                waiting = self._groups.get(delivery.group)
                if waiting is None:
                    self._groups[delivery.group] = deque()
                    ready.append(delivery)
                else:
                    waiting.append(delivery)
        return ready

    def _next_in_group(self, done: SqsDelivery) -> None:
        """FIFO: start the next message of ``done``'s group, or return them all if ``done`` will come back."""
        if not self._fifo:
            return
        with self._changed:
            waiting = self._groups.get(done.group, deque())
            if waiting and done.outcome in ("ack", "dead_letter"):
                following: SqsDelivery | None = waiting.popleft()
                behind: list[SqsDelivery] = []
            else:
                following, behind = None, list(waiting)
                self._groups.pop(done.group, None)
        if following is not None:
            self._ready.put(following)
        self._release(behind)

    def _track(self, message: MessageTypeDef) -> SqsDelivery:
        envelope = wire.decode(message, count_attempts=True)
        delivery = SqsDelivery(self, message.get("ReceiptHandle", ""), envelope, self._visibility)
        with self._changed:
            self._held[delivery.receipt] = delivery
        return delivery

    # -- handling -------------------------------------------------------------

    def _work(self) -> None:
        while True:
            delivery = self._ready.get()
            if delivery is None:
                return
            if self._stopping.is_set():
                self._release([delivery])
                continue
            delivery.started = True
            try:
                self._handler(delivery)
            except Exception:
                log.exception(
                    "delivery handler crashed on %s from %s; the message comes back after its visibility timeout",
                    delivery.envelope.message_id,
                    self.queue,
                )
            if not delivery.settled:
                self._forget(delivery)
            self._next_in_group(delivery)

    # -- settling -------------------------------------------------------------

    def _settle(self, delivery: SqsDelivery, outcome: str) -> None:
        with self._changed:
            if delivery.settled:
                raise RuntimeError(f"message {delivery.envelope.message_id} was already settled")
            delivery.settled = True
            delivery.outcome = outcome
            self._held.pop(delivery.receipt, None)
            self._changed.notify_all()

    def _forget(self, delivery: SqsDelivery) -> None:
        """Stop looking after an unsettled message: SQS shows it again once its visibility times out."""
        with self._changed:
            delivery.settled = True
            self._held.pop(delivery.receipt, None)
            self._changed.notify_all()

    def _delete_later(self, delivery: SqsDelivery) -> None:
        self._deletes.put(delivery)

    def _retry(self, delivery: SqsDelivery, delay: float) -> None:
        with self._visibility_lock:  # so that the keeper cannot extend it afterwards
            self._settle(delivery, "retry")
            left = MAX_VISIBILITY - int(time.monotonic() - delivery.received_at) - 1
            timeout = max(min(round(delay), left), 0)
            try:
                self._sqs.change_message_visibility(
                    QueueUrl=self._url, ReceiptHandle=delivery.receipt, VisibilityTimeout=timeout
                )
            except AWS_ERRORS as exc:
                log.warning(
                    "could not delay the retry of %s on %s (%s); it comes back when its visibility times out",
                    delivery.envelope.message_id,
                    self.queue,
                    exc,
                )

    def _release(self, deliveries: Sequence[SqsDelivery]) -> None:
        """Make received but unhandled messages visible again at once."""
        if not deliveries:
            return
        with self._visibility_lock:
            for delivery in deliveries:
                self._forget(delivery)
            self._change_visibility([(delivery, 0) for delivery in deliveries], "return")

    # -- the keeper: batched deletes and visibility upkeep ---------------------

    def _keep(self) -> None:
        tick = min(max(self._visibility / 4, 0.2), 10.0)
        next_check = time.monotonic() + tick
        while True:
            try:
                batch = self._next_deletes(max(next_check - time.monotonic(), 0.0))
                if batch:
                    self._delete(batch)
                if time.monotonic() >= next_check:
                    self._extend()
                    next_check = time.monotonic() + tick
            except Exception:  # never let the keeper die: held messages would reappear under their handlers
                log.exception("upkeep of %s failed; carrying on", self.queue)
                time.sleep(0.1)
            if self._closing.is_set() and self._deletes.empty():
                return

    def _next_deletes(self, timeout: float) -> list[SqsDelivery]:
        try:
            first = self._deletes.get(timeout=timeout)
        except Empty:
            return []
        batch = [first] if first is not None else []
        until = time.monotonic() + FLUSH_INTERVAL
        while len(batch) < BATCH:
            try:
                item = self._deletes.get(timeout=max(until - time.monotonic(), 0.0))
            except Empty:
                break
            if item is not None:
                batch.append(item)
        return batch

    def _delete(self, batch: list[SqsDelivery]) -> None:
        entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
            {"Id": str(i), "ReceiptHandle": delivery.receipt} for i, delivery in enumerate(batch)
        ]
        try:
            response = self._sqs.delete_message_batch(QueueUrl=self._url, Entries=entries)
        except AWS_ERRORS as exc:
            log.warning(
                "could not delete %d handled message(s) from %s (%s); SQS will deliver them again",
                len(batch),
                self.queue,
                exc,
            )
            return
        for failed in response.get("Failed", []):
            delivery = batch[int(failed["Id"])]
            log.warning(
                "could not delete handled message %s from %s (%s: %s); SQS will deliver it again",
                delivery.envelope.message_id,
                self.queue,
                failed.get("Code"),
                failed.get("Message"),
            )

    def _extend(self) -> None:
        """Push back the visibility timeout of held messages that are about to reappear."""
        with self._visibility_lock:
            now = time.monotonic()
            with self._changed:
                due = [d for d in self._held.values() if d.visible_until - now < self._visibility / 2]
            changes: list[tuple[SqsDelivery, int]] = []
            for delivery in due:
                timeout = min(self._visibility, MAX_VISIBILITY - int(now - delivery.received_at) - 1)
                if delivery.visible_until - now < timeout:
                    changes.append((delivery, timeout))
                elif timeout < self._visibility / 2:
                    log.error(
                        "message %s on %s has been held for almost 12 hours, the most SQS allows; "
                        "it will be delivered again while its handler runs",
                        delivery.envelope.message_id,
                        self.queue,
                    )
            for delivery, timeout in self._change_visibility(changes, "extend the visibility of"):
                delivery.visible_until = now + timeout

    def _change_visibility(
        self, changes: Iterable[tuple[SqsDelivery, int]], what: str
    ) -> list[tuple[SqsDelivery, int]]:
        """ChangeMessageVisibilityBatch in chunks; return the changes SQS accepted."""
        pending = list(changes)
        done: list[tuple[SqsDelivery, int]] = []
        for start in range(0, len(pending), BATCH):
            chunk = pending[start : start + BATCH]
            entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
                {"Id": str(i), "ReceiptHandle": delivery.receipt, "VisibilityTimeout": timeout}
                for i, (delivery, timeout) in enumerate(chunk)
            ]
            try:
                response = self._sqs.change_message_visibility_batch(QueueUrl=self._url, Entries=entries)
            except AWS_ERRORS as exc:
                log.warning("could not %s %d message(s) on %s: %s", what, len(chunk), self.queue, exc)
                continue
            failed = {entry["Id"]: entry for entry in response.get("Failed", [])}
            for i, change in enumerate(chunk):
                error = failed.get(str(i))
                if error is None:
                    done.append(change)
                else:
                    log.warning(
                        "could not %s message %s on %s (%s: %s)",
                        what,
                        change[0].envelope.message_id,
                        self.queue,
                        error.get("Code"),
                        error.get("Message"),
                    )
        return done

    # -- stopping -------------------------------------------------------------

    def stop(self, timeout: float) -> None:
        """Stop receiving, let running handlers finish (up to ``timeout``), return unstarted messages."""
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + timeout
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        self._release(self._drain_ready())
        for _ in self._workers:
            self._ready.put(None)
        for thread in (*self._workers, self._poller):
            thread.join(max(deadline - time.monotonic(), 0.0))
        with self._changed:
            unstarted = [d for d in self._held.values() if not d.started]
        self._release([*self._drain_ready(), *unstarted])
        self._closing.set()
        self._deletes.put(None)
        self._keeper.join(max(deadline - time.monotonic(), 1.0))
        running = sum(thread.is_alive() for thread in self._workers)
        if running:
            log.warning(
                "%d handler(s) on %s still running after %.1fs; their messages will be delivered again",
                running,
                self.queue,
                timeout,
            )
        if self._poller.is_alive():
            log.info("%s: a receive is still in flight; what it brings back is returned at once", self.queue)

    def _drain_ready(self) -> list[SqsDelivery]:
        drained: list[SqsDelivery] = []
        while True:
            try:
                item = self._ready.get_nowait()
            except Empty:
                return drained
            if item is not None:
                drained.append(item)
