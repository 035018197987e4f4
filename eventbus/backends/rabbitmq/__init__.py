"""The RabbitMQ backend (``amqp://`` and ``amqps://``), on pika.

Modules: :mod:`.options` (the URL), :mod:`.topology` (what a plan becomes on
the broker, and provisioning), :mod:`.link` (a connection on its own I/O
thread, reconnected with backoff), :mod:`.publisher` (confirmed, pipelined
publishing), :mod:`.consumer` (deliveries handled on worker threads) and
:mod:`.wire` (envelopes as AMQP properties and headers); for operations,
:mod:`.dead_letters` (peek, replay, purge) and :mod:`.diff` (the broker
compared with a plan).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence

from eventbus import inspection
from eventbus.backends import redact_url
from eventbus.backends.base import Consumer, DeliveryHandler
from eventbus.backends.rabbitmq import dead_letters, diff
from eventbus.backends.rabbitmq.consumer import RabbitConsumer, RabbitDelivery
from eventbus.backends.rabbitmq.diff import InspectionError
from eventbus.backends.rabbitmq.link import Link
from eventbus.backends.rabbitmq.options import BrokerUnavailableError, Options
from eventbus.backends.rabbitmq.publisher import Outgoing, Publisher
from eventbus.backends.rabbitmq.topology import Resources, apply, resources
from eventbus.envelope import Envelope
from eventbus.errors import PublishError
from eventbus.topology import Topology, dead_letter_name

__all__ = [
    "BrokerUnavailableError",
    "InspectionError",
    "Options",
    "RabbitConsumer",
    "RabbitDelivery",
    "RabbitMQBackend",
]

#: How many failed messages a publish_many error lists by name.
_LISTED = 10


class RabbitMQBackend:
    """The :class:`~eventbus.backends.base.Backend` on RabbitMQ.

    It keeps two connections, each on its own thread and opened on first
    use: one publishes (also the retry and dead-letter copies), one carries
    every consumer's channel, so a publisher throttled by the broker never
    stalls deliveries.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self._publish_link = Link(options, "publish")
        self._consume_link = Link(options, "consume")
        self._publisher = Publisher(self._publish_link, options.confirm_timeout, options.connect_timeout)
        self._lock = threading.Lock()
        self._dead_letters: dict[str, str] = {}
        self._consumers: list[RabbitConsumer] = []

    @classmethod
    def from_url(cls, url: str) -> RabbitMQBackend:
        """``amqp://user:pass@host:5672/vhost?queue_type=quorum&...`` (see :class:`Options`)."""
        return cls(Options.parse(url))

    def plan(self, topology: Topology) -> Resources:
        """The exchanges, queues and bindings that provisioning ``topology`` declares."""
        return resources(topology, self.options.queue_type, self.options.retry_delays)

    def provision(self, topology: Topology) -> None:
        """Declare the plan; raise ``TopologyConflictError`` if an existing resource differs."""
        apply(self.options, self.plan(topology))
        with self._lock:
            self._dead_letters.update({plan.name: plan.dead_letter for plan in topology.queues})

    def publish(self, topic: str, envelope: Envelope) -> None:
        """Publish to the ``topic`` exchange with routing key = manifest; return once confirmed."""
        errors = self._publisher.publish([Outgoing(topic, envelope.manifest, envelope)])
        if errors:
            raise PublishError(
                f"publishing {envelope.manifest} {envelope.message_id} to topic {topic!r} on "
                f"{redact_url(self.options.url)} failed: {errors[0]}"
            )

    def publish_many(self, messages: Sequence[tuple[str, Envelope]]) -> None:
        """Publish all ``messages`` with their confirms in flight together; raise naming the failed ones."""
        errors = self._publisher.publish([Outgoing(topic, env.manifest, env) for topic, env in messages])
        if errors:
            listed = [
                f"#{index} {messages[index][1].manifest} {messages[index][1].message_id} "
                f"to {messages[index][0]!r}: {error}"
                for index, error in sorted(errors.items())[:_LISTED]
            ]
            more = f"\n- ... and {len(errors) - _LISTED} more" if len(errors) > _LISTED else ""
            raise PublishError(
                f"{len(errors)} of {len(messages)} messages were not confirmed by "
                f"{redact_url(self.options.url)}:\n- " + "\n- ".join(listed) + more
            )

    def send(self, queue: str, envelope: Envelope) -> None:
        """Put ``envelope`` on ``queue`` through the default exchange; raise if no such queue took it."""
        errors = self._publisher.publish([Outgoing("", queue, envelope, mandatory=True)])
        if errors:
            raise PublishError(
                f"sending {envelope.manifest} {envelope.message_id} to queue {queue!r} failed: {errors[0]}"
            )

    def consume(self, queue: str, handler: DeliveryHandler, *, concurrency: int, prefetch: int) -> Consumer:
        """Consume ``queue`` with ``concurrency`` handler threads and ``prefetch`` unacked messages at most."""
        consumer = RabbitConsumer(
            link=self._consume_link,
            publisher=self._publisher,
            queue=queue,
            dead_letter=self._dead_letter_of(queue),
            ladder=self.options.retry_delays,
            handler=handler,
            concurrency=concurrency,
            prefetch=prefetch,
        )
        with self._lock:
            self._consumers.append(consumer)
        return consumer

    def dead_letters(self, queue: str, limit: int) -> list[Envelope]:
        """Peek at up to ``limit`` messages of ``queue``'s dead-letter queue; they stay there."""
        return dead_letters.peek(self.options, self._dead_letter_of(queue), limit)

    def replay_dead_letters(
        self, queue: str, *, limit: int | None = None, message_ids: Collection[str] | None = None
    ) -> list[str]:
        """Move dead letters of ``queue`` back onto it, oldest first; return their message ids.

        Each copy is confirmed on the queue before its dead letter is acked;
        the dead letters not selected stay where they were.
        """
        return dead_letters.replay(
            self.options,
            self._publisher,
            queue,
            self._dead_letter_of(queue),
            limit=limit,
            message_ids=message_ids,
        )

    def purge_dead_letters(self, queue: str) -> int:
        """Delete the dead letters of ``queue`` (queue.purge: those being peeked at stay); return how many."""
        return dead_letters.purge(self.options, self._dead_letter_of(queue))

    def inspect(self, topology: Topology) -> inspection.TopologyReport:
        """Compare ``topology`` with the broker's exchanges, queues and bindings; change nothing.

        Reads the broker's listings with ``rabbitmqctl`` (see :mod:`.diff`).
        """
        found = diff.read(self.options)
        return diff.compare(topology, self.plan(topology), self.options.retry_delays, found)

    def __repr__(self) -> str:
        return f"<RabbitMQBackend {redact_url(self.options.url)}>"

    def close(self) -> None:
        """Stop leftover consumers and close both connections; the next call reconnects."""
        with self._lock:
            consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            if not consumer.stopped:
                consumer.stop(timeout=5.0)
        self._consume_link.close()
        self._publish_link.close()

    def _dead_letter_of(self, queue: str) -> str:
        with self._lock:
            return self._dead_letters.get(queue) or dead_letter_name(queue)
