"""Consuming one queue: deliveries on the I/O thread, handlers on worker threads.

The I/O thread receives messages (at most ``prefetch`` unacknowledged) and
queues them for ``concurrency`` worker threads, so a long handler never
holds up heartbeats. Workers settle deliveries by handing acks back to the
I/O thread. Delivery tags belong to the channel they came on: after a
reconnect the broker redelivers whatever the old channel had not settled,
and settling an old delivery is skipped rather than sent on the new channel.
"""

from __future__ import annotations

import functools
import logging
import queue as queues
import threading
import time
from collections import deque
from collections.abc import Sequence

import pika
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel

from eventbus.backends.base import DeliveryHandler
from eventbus.backends.rabbitmq import wire
from eventbus.backends.rabbitmq.link import Link
from eventbus.backends.rabbitmq.publisher import Outgoing, Publisher
from eventbus.backends.rabbitmq.topology import retry_queue, rung
from eventbus.envelope import Envelope
from eventbus.errors import PublishError

log = logging.getLogger("eventbus.rabbitmq")

_ACK = "ack"
_REQUEUE = "requeue"
#: Pause before a delivery whose retry or dead-letter copy could not be stored is returned.
_SETTLE_FAILURE_PAUSE = 1.0
_MAX_REOPEN_BACKOFF = 30.0


class RabbitDelivery:
    """A message received from a queue, settled exactly once by a worker thread."""

    __slots__ = ("_consumer", "_generation", "_settled", "_tag", "envelope", "queue")

    def __init__(self, consumer: RabbitConsumer, generation: int, tag: int, envelope: Envelope) -> None:
        self._consumer = consumer
        self._generation = generation
        self._tag = tag
        self._settled = False
        self.envelope = envelope
        self.queue = consumer.queue

    @property
    def settled(self) -> bool:
        """Whether ack, retry, dead_letter or release was called."""
        return self._settled

    @property
    def stale(self) -> bool:
        """Whether the channel it came on is gone (the broker will deliver it again)."""
        return self._generation != self._consumer.generation

    def ack(self) -> None:
        """Handled: remove it from the queue."""
        self._finish(_ACK)

    def retry(self, envelope: Envelope, delay: float) -> None:
        """Store ``envelope`` in the retry queue nearest ``delay`` (confirmed), then ack this delivery."""
        self._check()
        self._consumer.store(self._consumer.retry_target(delay), envelope)
        self._finish(_ACK)

    def dead_letter(self, envelope: Envelope) -> None:
        """Store ``envelope`` in the dead-letter queue (confirmed), then ack this delivery."""
        self._check()
        self._consumer.store(self._consumer.dead_letter, envelope)
        self._finish(_ACK)

    def release(self) -> None:
        """Give it back to the broker untouched, for another delivery."""
        self._finish(_REQUEUE)

    def _check(self) -> None:
        if self._settled:
            raise RuntimeError(f"message {self.envelope.message_id} was already settled")

    def _finish(self, how: str) -> None:
        self._check()
        self._settled = True
        self._consumer.settle(self._generation, self._tag, how)


class RabbitConsumer:
    """Consumes ``queue`` on a link, running ``handler`` on ``concurrency`` worker threads."""

    def __init__(
        self,
        *,
        link: Link,
        publisher: Publisher,
        queue: str,
        dead_letter: str,
        ladder: Sequence[float],
        handler: DeliveryHandler,
        concurrency: int,
        prefetch: int,
    ) -> None:
        self.queue = queue
        self.dead_letter = dead_letter
        self._ladder = tuple(ladder)
        self._link = link
        self._publisher = publisher
        self._handler = handler
        self._prefetch = max(prefetch, concurrency)
        self._work: queues.SimpleQueue[RabbitDelivery | None] = queues.SimpleQueue()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._settles: deque[tuple[int, int, str]] = deque()
        self._wake_pending = False
        # I/O thread state; ``generation`` counts channels and is read by workers.
        self.generation = 0
        self._channel: Channel | None = None
        self._consumer_tag: str | None = None
        self._opening = False
        self._reopen_failures = 0
        self._threads = [
            threading.Thread(target=self._run_worker, name=f"eventbus-{queue}-{i}", daemon=True)
            for i in range(concurrency)
        ]
        for thread in self._threads:
            thread.start()
        link.attach(self)

    # -- worker threads ---------------------------------------------------------

    def _run_worker(self) -> None:
        while True:
            delivery = self._work.get()
            if delivery is None:
                return
            if delivery.stale:
                continue  # its channel is gone: the broker delivers it again
            if self._stopping.is_set():
                delivery.release()
                continue
            try:
                self._handler(delivery)
            except PublishError:
                log.exception("could not settle %s from %s; returning it", delivery.envelope.message_id, self.queue)
                time.sleep(_SETTLE_FAILURE_PAUSE)  # the broker is struggling: do not spin on redeliveries
            except Exception:
                log.exception("delivery handler crashed on %s; returning the message", delivery.envelope.message_id)
            if not delivery.settled:
                delivery.release()

    def retry_target(self, delay: float) -> str:
        """The queue a retry after ``delay`` seconds goes to: a retry queue, or this queue for no delay."""
        step = rung(delay, self._ladder)
        return self.queue if step is None else retry_queue(self.queue, step)

    def store(self, queue: str, envelope: Envelope) -> None:
        """Put ``envelope`` on ``queue`` and wait for the broker's confirm."""
        errors = self._publisher.publish([Outgoing("", queue, envelope, mandatory=True)])
        if errors:
            raise PublishError(f"could not store message {envelope.message_id} in queue {queue!r}: {errors[0]}")

    def settle(self, generation: int, tag: int, how: str) -> None:
        """Send an ack or a requeue from any thread (batched onto the I/O thread)."""
        with self._lock:
            self._settles.append((generation, tag, how))
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            self._link.call(self._flush_settles)

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    def stop(self, timeout: float) -> None:
        """Cancel the consumer, let handlers finish (up to ``timeout``), return what was not handled."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        cancelled = threading.Event()
        self._link.call(functools.partial(self._cancel, cancelled))
        cancelled.wait(min(max(timeout, 0.1), 5.0))
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        alive = sum(thread.is_alive() for thread in self._threads)
        if alive:
            log.warning(
                "%d handler(s) on %s still running after %.1fs; their messages go back", alive, self.queue, timeout
            )
        closed = threading.Event()
        self._link.call(functools.partial(self._close, closed))
        closed.wait(5.0)
        self._link.detach(self)

    # -- I/O thread ---------------------------------------------------------------

    def connected(self, connection: SelectConnection) -> None:
        """Open a channel and start consuming."""
        if self._channel is None and not self._opening and not self._stopping.is_set():
            self._opening = True
            connection.channel(on_open_callback=self._on_channel_open)

    def disconnected(self, reason: str) -> None:
        """The channel died with the connection; its deliveries will come again."""
        self._forget_channel()

    def _forget_channel(self) -> None:
        self._channel = None
        self._opening = False
        self._consumer_tag = None
        self.generation += 1

    def _on_channel_open(self, channel: Channel) -> None:
        self._opening = False
        if self._stopping.is_set() or self._channel is not None:
            channel.close()
            return
        self.generation += 1
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_cancel_callback(lambda frame: self._on_broker_cancel(channel))
        channel.basic_qos(prefetch_count=self._prefetch, callback=lambda frame: self._start(channel))

    def _start(self, channel: Channel) -> None:
        current = self._channel
        if current is None or current is not channel or self._stopping.is_set():
            return
        self._consumer_tag = current.basic_consume(self.queue, functools.partial(self._on_message, self.generation))
        self._reopen_failures = 0

    def _on_message(
        self,
        generation: int,
        channel: Channel,
        method: pika.spec.Basic.Deliver,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        self._work.put(RabbitDelivery(self, generation, method.delivery_tag, wire.envelope(body, properties)))

    def _on_broker_cancel(self, channel: Channel) -> None:
        log.warning("the broker cancelled the consumer of %s (queue deleted?); will try again", self.queue)
        current = self._channel
        if current is not None and current is channel and current.is_open:
            current.close()

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is not self._channel:
            return
        self._forget_channel()
        if self._stopping.is_set():
            return
        connection = self._link.connection
        if connection is None:
            return  # the link reconnects and calls connected()
        delay = min(0.5 * 2**self._reopen_failures, _MAX_REOPEN_BACKOFF)
        self._reopen_failures += 1
        log.warning("the channel consuming %s was closed (%s); reopening in %.1fs", self.queue, reason, delay)
        self._link.call_later(delay, lambda: self._reopen(connection))

    def _reopen(self, connection: SelectConnection) -> None:
        if connection.is_open:
            self.connected(connection)

    def _flush_settles(self) -> None:
        with self._lock:
            self._wake_pending = False
            settles, self._settles = self._settles, deque()
        channel = self._channel
        for generation, tag, how in settles:
            if channel is None or generation != self.generation or not channel.is_open:
                log.debug("not settling delivery %d of a closed channel on %s: it comes again", tag, self.queue)
                continue
            if how == _ACK:
                channel.basic_ack(tag)
            else:
                channel.basic_nack(tag, requeue=True)

    def _cancel(self, done: threading.Event) -> None:
        channel, tag = self._channel, self._consumer_tag
        if channel is None or tag is None or not channel.is_open:
            done.set()
            return
        channel.basic_cancel(tag, callback=lambda frame: done.set())

    def _close(self, done: threading.Event) -> None:
        # Queued acks were flushed before this ran (same loop, in order); closing returns the rest.
        self._flush_settles()
        channel = self._channel
        self._forget_channel()
        if channel is not None and channel.is_open:
            channel.close()
        done.set()
