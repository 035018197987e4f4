"""The contract between the bus and a broker.

A backend moves envelopes and applies topologies. It knows nothing of
handlers, serializers or retry policies: the dispatcher decides, and settles
each delivery through ``ack``, ``retry`` or ``dead_letter``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Protocol, runtime_checkable

import attrs

from eventbus.envelope import ERROR_HEADERS, Envelope
from eventbus.inspection import TopologyReport
from eventbus.topology import Topology


class Delivery(Protocol):
    """One message received from a queue, waiting to be settled exactly once."""

    @property
    def envelope(self) -> Envelope:
        """The message; ``attempt`` is the backend's count of deliveries."""
        ...

    @property
    def queue(self) -> str:
        """The queue it came from."""
        ...

    def ack(self) -> None:
        """The message was handled: remove it from the queue."""
        ...

    def retry(self, envelope: Envelope, delay: float) -> None:
        """Deliver ``envelope`` (the same message, usually with a new attempt) again after ``delay`` seconds."""
        ...

    def dead_letter(self, envelope: Envelope) -> None:
        """Move ``envelope`` (carrying ``error-*`` headers) to the queue's dead-letter queue."""
        ...


#: Called by a backend's consumer threads for each delivery.
DeliveryHandler = Callable[[Delivery], object]


class Consumer(Protocol):
    """A running consumption of one queue."""

    def stop(self, timeout: float) -> None:
        """Stop taking deliveries, let in-flight ones finish (up to ``timeout``), return the rest."""
        ...


class Backend(Protocol):
    """A broker, as the bus sees it."""

    def provision(self, topology: Topology) -> None:
        """Create what ``topology`` needs; idempotent."""
        ...

    def publish(self, topic: str, envelope: Envelope) -> None:
        """Publish to ``topic``; return once the broker has accepted it, else raise ``PublishError``."""
        ...

    def publish_many(self, messages: Sequence[tuple[str, Envelope]]) -> None:
        """Publish several messages; raise ``PublishError`` naming the ones not accepted."""
        ...

    def send(self, queue: str, envelope: Envelope) -> None:
        """Put ``envelope`` straight on ``queue``; return once accepted."""
        ...

    def consume(self, queue: str, handler: DeliveryHandler, *, concurrency: int, prefetch: int) -> Consumer:
        """Start calling ``handler`` for deliveries from ``queue`` on background threads."""
        ...

    def dead_letters(self, queue: str, limit: int) -> list[Envelope]:
        """Up to ``limit`` envelopes in the dead-letter queue of ``queue``, without removing them."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...


# -- optional capabilities: the operations tools use them when a backend has them --


@runtime_checkable
class TopologyInspector(Protocol):
    """A backend that can compare a topology with what the broker has."""

    def inspect(self, topology: Topology) -> TopologyReport:
        """What ``topology`` lacks, has in excess or has otherwise on the broker; changes nothing.

        Build it with :func:`eventbus.inspection.compare` from the resources
        found (see :mod:`eventbus.inspection`).
        """
        ...


@runtime_checkable
class DeadLetterTools(Protocol):
    """A backend that can move dead letters back to their queue and delete them."""

    def replay_dead_letters(
        self, queue: str, *, limit: int | None = None, message_ids: Collection[str] | None = None
    ) -> list[str]:
        """Move dead letters of ``queue`` back onto ``queue``, oldest first; return their message ids.

        Only those whose id is in ``message_ids`` when given, at most
        ``limit`` when given. Each goes back as :func:`replayed` makes it; the
        copy is stored on the queue before the dead letter is removed.
        """
        ...

    def purge_dead_letters(self, queue: str) -> int:
        """Delete every dead letter of ``queue``; return how many there were."""
        ...


def replayed(envelope: Envelope) -> Envelope:
    """A dead letter as it goes back to its queue: same message id, attempt 1, no ``error-*`` headers.

    Keeping the id lets a de-duplication cache skip the handlers that had
    already succeeded on it.
    """
    kept = {key: value for key, value in envelope.headers.items() if key not in ERROR_HEADERS}
    return attrs.evolve(envelope, attempt=1, headers=kept)
