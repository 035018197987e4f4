"""What a topology becomes on RabbitMQ, and provisioning it without ever deleting anything.

For a plan with topics, queues and subscriptions:

- every topic is a durable ``topic`` exchange of that name;
- every queue is a durable queue (classic or quorum) whose broker-side
  dead-letter target is its dead-letter queue;
- every (topic, queue, manifest) is a binding with routing key = manifest;
- every queue has a dead-letter queue, and a ladder of retry queues
  ``<queue>-retry-<delay>``: each holds messages for its delay (a
  per-queue TTL, so one long delay never holds up a short one: they sit
  in different queues) and then dead-letters them through the default
  exchange back to ``<queue>``. A requested delay is rounded to the
  nearest rung of the ladder (nearest by ratio).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import pika
import pika.exceptions

from eventbus.backends import redact_url
from eventbus.backends.rabbitmq.options import BrokerUnavailableError, Options, QueueType
from eventbus.errors import TopologyConflictError
from eventbus.topology import Topology


@attrs.frozen
class QueueDeclaration:
    """A durable queue and its ``x-`` arguments."""

    name: str
    arguments: Mapping[str, Any]


@attrs.frozen
class Binding:
    """Messages published on ``exchange`` with routing key ``routing_key`` go to ``queue``."""

    exchange: str
    queue: str
    routing_key: str


@attrs.frozen
class Resources:
    """Everything one topology needs on RabbitMQ."""

    exchanges: tuple[str, ...]
    queues: tuple[QueueDeclaration, ...]
    bindings: tuple[Binding, ...]


def delay_label(seconds: float) -> str:
    """``0.1`` -> ``100ms``, ``3`` -> ``3s``, ``180`` -> ``3m``, ``3600`` -> ``1h``."""
    ms = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def retry_queue(queue: str, delay: float) -> str:
    """The name of ``queue``'s retry queue that holds messages for ``delay`` seconds (a ladder rung)."""
    return f"{queue}-retry-{delay_label(delay)}"


def rung(delay: float, ladder: Sequence[float]) -> float | None:
    """The ladder delay closest to ``delay`` by ratio, or ``None`` for no delay at all."""
    if delay <= 0:
        return None
    return min(ladder, key=lambda step: abs(math.log(delay / step)))


def resources(topology: Topology, queue_type: QueueType, ladder: Sequence[float]) -> Resources:
    """The exchanges, queues and bindings that ``topology`` needs."""
    base: dict[str, Any] = {"x-queue-type": queue_type}
    queues: list[QueueDeclaration] = []
    for plan in topology.queues:
        queues.append(
            QueueDeclaration(
                plan.name, {**base, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": plan.dead_letter}
            )
        )
        queues.append(QueueDeclaration(plan.dead_letter, dict(base)))
        for step in ladder:
            arguments = {
                **base,
                "x-message-ttl": round(step * 1000),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": plan.name,
            }
            if queue_type == "quorum":
                # Quorum queues dead-letter at most once unless told otherwise.
                arguments |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
            queues.append(QueueDeclaration(retry_queue(plan.name, step), arguments))
    bindings = [Binding(sub.topic, sub.queue, manifest) for sub in topology.subscriptions for manifest in sub.manifests]
    return Resources(tuple(topology.topics), tuple(queues), tuple(bindings))


_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']*)' in vhost '[^']*': "
    r"received (?P<wanted>.+?) but current is (?P<current>.+)$"
)


def _value(text: str) -> str:
    """``the value '' of type 'longstr'`` -> ``''``; ``none`` -> ``(not set)``."""
    found = re.fullmatch(r"the value (.*) of type '[^']*'", text.strip())
    text = found[1] if found else text.strip()
    return "(not set)" if text == "none" else text


def conflict_message(error: pika.exceptions.ChannelClosedByBroker, queue_type: QueueType) -> str:
    """Say which argument of which resource differs from the plan, and how to resolve it."""
    text = str(error.reply_text)
    found = _INEQUIVALENT.search(text)
    if found is None:
        return f"the broker refused a declaration: {error.reply_code} {text}"
    arg, kind, name = found["arg"], found["kind"], found["name"]
    wanted, current = _value(found["wanted"]), _value(found["current"])
    message = f"{kind} {name!r} already exists with {arg} = {current}, but eventbus needs {arg} = {wanted}."
    if kind == "exchange":
        return (
            f"{message} Another application owns an exchange of that name: rename the topic, "
            f"or delete the exchange yourself if nothing uses it (rabbitmqctl delete_exchange {name})."
        )
    hint = ""
    if arg == "x-queue-type":
        other = "quorum" if queue_type == "classic" else "classic"
        hint = f" To keep the existing queue, use queue_type={other} in the URL."
    return (
        f"{message}{hint} (The broker names the first argument that differs; others may differ too.) "
        f"RabbitMQ cannot change a queue's arguments in place and eventbus never deletes "
        f"queues: move its messages elsewhere (e.g. shovel them) and delete it yourself "
        f"(rabbitmqctl delete_queue {name}), then provision again."
    )


def apply(options: Options, plan: Resources) -> None:
    """Declare ``plan`` on the broker (idempotent); raise ``TopologyConflictError`` listing every conflict."""
    conflicts: list[str] = []
    try:
        connection = pika.BlockingConnection(options.connection_parameters("provision"))
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnavailableError(f"cannot connect to {redact_url(options.url)}: {exc!r}") from exc
    try:
        channel = connection.channel()

        def declare(action: Any) -> None:
            nonlocal channel
            try:
                action(channel)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code not in (405, 406):
                    raise
                conflicts.append(conflict_message(exc, options.queue_type))
                channel = connection.channel()  # a refused declaration closes the channel

        for exchange in plan.exchanges:
            declare(lambda ch, name=exchange: ch.exchange_declare(name, "topic", durable=True))
        for queue in plan.queues:
            declare(lambda ch, q=queue: ch.queue_declare(q.name, durable=True, arguments=dict(q.arguments)))
        if not conflicts:
            for binding in plan.bindings:
                declare(lambda ch, b=binding: ch.queue_bind(b.queue, b.exchange, routing_key=b.routing_key))
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnavailableError(f"provisioning on {redact_url(options.url)} failed: {exc!r}") from exc
    finally:
        if connection.is_open:
            connection.close()
    if conflicts:
        raise TopologyConflictError(
            f"the broker at {redact_url(options.url)} has resources that differ from the plan; nothing was "
            "deleted or changed:\n- " + "\n- ".join(conflicts)
        )
