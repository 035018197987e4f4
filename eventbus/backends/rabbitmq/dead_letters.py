"""Dead-letter tools on RabbitMQ: peek at, replay and purge a dead-letter queue.

Each call opens a short-lived blocking connection of its own. A replay takes
dead letters with ``basic.get`` (unacknowledged), stores their copies on the
queue through the publisher (confirmed, ``mandatory``) and acks a dead
letter only once its copy is confirmed: a crash in between leaves a
duplicate, never a loss. The dead letters it skips (not among the ids asked
for) stay unacknowledged, so the broker does not hand them out again, and
are given back with ``basic.nack(requeue)`` at the end, which puts them
back in their place. It looks at the messages the dead-letter queue holds
when it starts, then twice more at what came since (new dead letters, or
messages a peek gave back late), so it ends even while dead letters keep
arriving.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from typing import Any

import pika
import pika.exceptions

from eventbus.backends import redact_url
from eventbus.backends.base import replayed
from eventbus.backends.rabbitmq import wire
from eventbus.backends.rabbitmq.options import BrokerUnavailableError, Options
from eventbus.backends.rabbitmq.publisher import Outgoing, Publisher
from eventbus.envelope import Envelope
from eventbus.errors import PublishError

#: Dead letters whose copies are published (and confirmed) together.
BATCH = 100
#: How many times a replay looks again for dead letters that came after it counted them.
RECHECKS = 2
_NOT_FOUND = 404


@contextlib.contextmanager
def channel(options: Options, role: str) -> Iterator[Any]:
    """A channel on a blocking connection of its own, closed on the way out (unacked messages go back)."""
    try:
        connection = pika.BlockingConnection(options.connection_parameters(role))
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnavailableError(f"cannot connect to {redact_url(options.url)}: {exc!r}") from exc
    try:
        yield connection.channel()
    except pika.exceptions.ChannelClosedByBroker:
        raise
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnavailableError(f"the connection to {redact_url(options.url)} failed: {exc!r}") from exc
    finally:
        if connection.is_open:
            connection.close()


def depth(ch: Any, queue: str) -> int | None:
    """Messages ready in ``queue`` (passive declare), or ``None`` if there is no such queue (the channel closes)."""
    try:
        return int(ch.queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != _NOT_FOUND:
            raise
        return None


def peek(options: Options, dead_letter: str, limit: int) -> list[Envelope]:
    """Up to ``limit`` messages of ``dead_letter``, read unacknowledged: closing the channel puts them back."""
    found: list[Envelope] = []
    with channel(options, "inspect") as ch:
        try:
            while len(found) < limit:
                method, properties, body = ch.basic_get(dead_letter, auto_ack=False)
                if method is None:
                    break
                found.append(wire.envelope(body, properties))
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != _NOT_FOUND:  # no dead-letter queue: no dead letters
                raise
    return found


def replay(
    options: Options,
    publisher: Publisher,
    queue: str,
    dead_letter: str,
    *,
    limit: int | None,
    message_ids: Collection[str] | None,
) -> list[str]:
    """Move dead letters of ``dead_letter`` back to ``queue``, oldest first; return their message ids."""
    wanted = None if message_ids is None else set(message_ids)
    moved: list[str] = []
    with channel(options, "replay") as ch:
        if depth(ch, queue) is None:
            raise PublishError(
                f"no queue named {queue!r} on {redact_url(options.url)}; provision the service that consumes it first"
            )
        budget = depth(ch, dead_letter)
        if budget is None:
            return moved  # no dead-letter queue: no dead letters
        skipped: list[int] = []
        batch: list[tuple[int, Envelope]] = []
        rechecks = 0
        try:
            while limit is None or len(moved) + len(batch) < limit:
                if budget == 0:
                    # Looked at all that was ready; see what came since (new dead letters, or
                    # messages a peek returned late), a bounded number of times.
                    rechecks += 1
                    if rechecks > RECHECKS:
                        break
                    budget = depth(ch, dead_letter) or 0
                    if budget == 0:
                        break
                method, properties, body = ch.basic_get(dead_letter, auto_ack=False)
                if method is None:
                    break
                budget -= 1
                envelope = wire.envelope(body, properties)
                if wanted is not None and envelope.message_id not in wanted:
                    skipped.append(method.delivery_tag)
                    continue
                batch.append((method.delivery_tag, envelope))
                if len(batch) >= BATCH:
                    moved += _move(ch, publisher, queue, dead_letter, batch, moved)
                    batch = []
            moved += _move(ch, publisher, queue, dead_letter, batch, moved)
        finally:
            # If the connection is gone the broker has returned them already.
            with contextlib.suppress(pika.exceptions.AMQPError):
                for tag in skipped:
                    if ch.is_open:
                        ch.basic_nack(tag, requeue=True)
    return moved


def _move(
    ch: Any, publisher: Publisher, queue: str, dead_letter: str, batch: list[tuple[int, Envelope]], moved: list[str]
) -> list[str]:
    """Store the copies of ``batch`` on ``queue``; ack the dead letters whose copy was confirmed, return the rest."""
    if not batch:
        return []
    errors = publisher.publish([Outgoing("", queue, replayed(envelope), mandatory=True) for _, envelope in batch])
    done: list[str] = []
    for index, (tag, envelope) in enumerate(batch):
        if index in errors:
            ch.basic_nack(tag, requeue=True)
        else:
            ch.basic_ack(tag)
            done.append(envelope.message_id)
    if errors:
        first = batch[min(errors)][1].message_id
        raise PublishError(
            f"replayed {len(moved) + len(done)} dead letter(s) of {dead_letter} to {queue}, then {len(errors)} "
            f"could not be stored there (they stay in {dead_letter}); the first, {first}: {errors[min(errors)]}"
        )
    return done


def purge(options: Options, dead_letter: str) -> int:
    """Delete the ready messages of ``dead_letter``; return how many (0 if there is no such queue)."""
    with channel(options, "purge") as ch:
        if depth(ch, dead_letter) is None:
            return 0
        return int(ch.queue_purge(dead_letter).method.message_count)
