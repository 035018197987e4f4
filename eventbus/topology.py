"""The topology: which topics, queues and subscriptions a service needs.

It is derived from the declarations and is plain data: print it, compare
it, turn it into JSON, and let a backend apply it idempotently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import attrs

from eventbus.errors import DeclarationError
from eventbus.specs import HandlerSpec, MessageSpec, is_fifo, message_spec


@attrs.frozen
class QueuePlan:
    """A queue the service consumes, with its dead-letter queue."""

    name: str
    dead_letter: str
    fifo: bool = False


@attrs.frozen
class Subscription:
    """Topic ``topic`` delivers to queue ``queue`` the messages whose manifest is in ``manifests``."""

    topic: str
    queue: str
    manifests: tuple[str, ...]


@attrs.frozen
class Topology:
    """Everything one service needs on the broker."""

    service: str
    topics: tuple[str, ...]
    queues: tuple[QueuePlan, ...]
    subscriptions: tuple[Subscription, ...]

    def queue(self, name: str) -> QueuePlan:
        """The plan of queue ``name``."""
        for plan in self.queues:
            if plan.name == name:
                return plan
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data."""
        return attrs.asdict(self)

    def to_json(self) -> str:
        """The plan as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        lines = [f"service {self.service}"]
        lines += [f"  topic {name}" for name in self.topics]
        for plan in self.queues:
            lines.append(f"  queue {plan.name}{' (fifo)' if plan.fifo else ''} -> dead letters {plan.dead_letter}")
        for sub in self.subscriptions:
            lines.append(f"  {sub.topic} -> {sub.queue} [{', '.join(sub.manifests)}]")
        return "\n".join(lines)


def dead_letter_name(queue: str) -> str:
    """``orders`` -> ``orders-dlq``; ``orders.fifo`` -> ``orders-dlq.fifo``."""
    if is_fifo(queue):
        return f"{queue[: -len('.fifo')]}-dlq.fifo"
    return f"{queue}-dlq"


def queue_name(service: str, handler: HandlerSpec, message: MessageSpec) -> str:
    """The queue a handler consumes ``message`` from.

    The service's queue unless the handler asked for its own; types on a
    FIFO topic arrive on a FIFO queue (SNS FIFO topics only deliver to FIFO
    queues), named with a ``.fifo`` suffix.
    """
    base = handler.queue or service
    if is_fifo(message.topic):
        return base if is_fifo(base) else f"{base}.fifo"
    if is_fifo(base):
        raise DeclarationError(
            f"@subscribe on {handler.name}: queue {base!r} is FIFO but {message.cls.__qualname__} is published "
            f"on the standard topic {message.topic!r}; drop the '.fifo' suffix or use a FIFO topic"
        )
    return base


def plan(service: str, handlers: Iterable[HandlerSpec], messages: Iterable[MessageSpec]) -> Topology:
    """Derive the topology of ``service`` from its handlers and the known message types."""
    topics: set[str] = {spec.topic for spec in messages}
    queues: set[str] = set()
    wanted: dict[tuple[str, str], set[str]] = {}
    for handler in handlers:
        for tp in handler.types:
            spec = message_spec(tp)
            assert spec is not None  # @subscribe checked it
            queue = queue_name(service, handler, spec)
            queues.add(queue)
            topics.add(spec.topic)
            wanted.setdefault((spec.topic, queue), set()).add(spec.manifest)
    return Topology(
        service=service,
        topics=tuple(sorted(topics)),
        queues=tuple(QueuePlan(q, dead_letter_name(q), is_fifo(q)) for q in sorted(queues)),
        subscriptions=tuple(
            Subscription(topic, queue, tuple(sorted(manifests))) for (topic, queue), manifests in sorted(wanted.items())
        ),
    )
