"""Confirmed publishing with many messages in flight.

Callers on any thread queue messages and wait; the I/O thread publishes them
on a channel in confirm mode and settles each caller when the broker acks
(often many messages with one ``multiple`` ack). So confirms cost one round
trip per burst, not per message, whether the burst is one ``publish_many``
or many threads publishing at once.

A message the broker could not take raises ``PublishError`` in its caller:
a nack, a ``mandatory`` message that no queue took (returned), a connection
or channel lost before the confirm (after one transparent re-publish on the
new channel: duplicates are possible, losses are not), or no confirm within
``confirm_timeout``. When the connection is down, a publish waits up to
``connect_timeout`` for it to come back; a broker that was never reached
fails at once.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from collections.abc import Sequence

import attrs
import pika
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel

from eventbus.backends.rabbitmq import wire
from eventbus.backends.rabbitmq.link import Link
from eventbus.envelope import Envelope

log = logging.getLogger("eventbus.rabbitmq")

#: How often a message is published before a lost confirm becomes an error.
_TRIES = 2
#: Messages published per turn of the I/O loop: between turns it writes to the socket and reads confirms.
_SLICE = 1024


@attrs.frozen
class Outgoing:
    """One message to publish: to the topic exchange ``exchange``, or if empty to the queue ``routing_key``."""

    exchange: str
    routing_key: str
    envelope: Envelope
    mandatory: bool = False


class _Batch:
    """What one caller waits for; settled on the I/O thread only."""

    __slots__ = ("_done", "abandoned", "errors", "remaining")

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.errors: dict[int, str] = {}
        self.abandoned = False
        # A held lock, released when the last message is settled: the cheapest wait there is.
        self._done = threading.Lock()
        if size:
            self._done.acquire()

    def wait(self, timeout: float) -> bool:
        """Wait until every message is settled; ``False`` on timeout."""
        if self._done.acquire(timeout=timeout):
            self._done.release()
            return True
        return False

    def settle(self, index: int, error: str | None) -> None:
        if error is not None:
            self.errors[index] = error
        self.remaining -= 1
        if self.remaining == 0:
            self._done.release()


class _Message:
    __slots__ = (
        "batch",
        "body",
        "exchange",
        "index",
        "mandatory",
        "properties",
        "returned",
        "routing_key",
        "settled",
        "tries",
    )

    def __init__(self, item: Outgoing, batch: _Batch, index: int) -> None:
        self.exchange = item.exchange
        self.routing_key = item.routing_key
        self.mandatory = item.mandatory
        self.body = item.envelope.body
        self.properties = wire.properties(item.envelope)
        self.batch = batch
        self.index = index
        self.tries = 0
        self.returned: str | None = None
        self.settled = False

    def settle(self, error: str | None) -> None:
        if not self.settled:
            self.settled = True
            self.batch.settle(self.index, error)


class Publisher:
    """Publishes on one link's connection with publisher confirms; thread-safe."""

    def __init__(self, link: Link, confirm_timeout: float, connect_timeout: float = 10.0) -> None:
        self._link = link
        self._timeout = confirm_timeout
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._incoming: deque[_Message] = deque()
        self._wake_pending = False
        self._attached = False
        # I/O thread state.
        self._channel: Channel | None = None
        self._opening = False
        self._ready = False
        self._pump_scheduled = False
        self._next_tag = 1
        self._unconfirmed: dict[int, _Message] = {}
        self._order: deque[int] = deque()
        self._declared: set[str] = set()
        self._declaring: deque[str] = deque()
        self._parked: dict[str, list[_Message]] = {}
        self._backlog: deque[_Message] = deque()

    def publish(self, items: Sequence[Outgoing]) -> dict[int, str]:
        """Publish ``items``; return the errors by index (empty when the broker confirmed them all)."""
        if not self._link.wait_up(self._connect_timeout):
            reason = self._link.down_because or "no answer"
            unreachable = f"the broker is unreachable ({reason}); it was not published"
            return dict.fromkeys(range(len(items)), unreachable)
        batch = _Batch(len(items))
        messages = [_Message(item, batch, index) for index, item in enumerate(items)]
        # Hand them over in slices, so the I/O thread starts sending while the rest are prepared.
        for start in range(0, len(messages), _SLICE):
            self._submit(messages[start : start + _SLICE])
        if not batch.wait(self._timeout):
            batch.abandoned = True  # what is not sent yet never will be
            return self._late(messages) | batch.errors
        return batch.errors

    def _late(self, messages: list[_Message]) -> dict[int, str]:
        late = f"no confirm from the broker within {self._timeout:g}s (confirm_timeout)"
        down = self._link.down_because
        if down is not None:
            late += f"; the connection is down: {down}"
        return {
            m.index: f"{late}; {'it may or may not be stored' if m.tries else 'it was not published'}"
            for m in messages
            if not m.settled
        }

    def _submit(self, messages: list[_Message]) -> None:
        with self._lock:
            if not self._attached:
                self._attached = True
                self._link.attach(self)
            self._incoming.extend(messages)
            wake, self._wake_pending = not self._wake_pending, True
        if wake:
            self._link.call(self._drain)

    # -- I/O thread -----------------------------------------------------------------

    def connected(self, connection: SelectConnection) -> None:
        """Open the confirm-mode channel."""
        if self._channel is None and not self._opening:
            self._opening = True
            connection.channel(on_open_callback=self._on_channel_open)

    def disconnected(self, reason: str) -> None:
        """Everything unconfirmed is published again on the next channel, or fails."""
        self._lost(reason)

    def _on_channel_open(self, channel: Channel) -> None:
        self._opening = False
        if self._channel is not None:
            channel.close()
            return
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm, callback=functools.partial(self._on_select_ok, channel))

    def _on_select_ok(self, channel: Channel, frame: object) -> None:
        if channel is self._channel:
            self._ready = True
            self._next_tag = 1
            self._drain()

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is not self._channel:
            return
        self._lost(str(reason), declare_failed=isinstance(reason, pika.exceptions.ChannelClosedByBroker))
        connection = self._link.connection
        if connection is not None and not self._link.closing:
            # The broker closed the channel (e.g. a refused exchange declare); open another.
            self._link.call_later(0.05, lambda: self._reopen(connection))

    def _reopen(self, connection: SelectConnection) -> None:
        if self._channel is None and connection.is_open:
            self.connected(connection)

    def _drain(self) -> None:
        with self._lock:
            self._wake_pending = False
            arrived, self._incoming = self._incoming, deque()
        self._backlog.extend(arrived)
        if self._link.closing:
            self._fail_backlog("the backend was closed before the message was published")
        elif self._ready and not self._pump_scheduled:
            self._pump()

    def _resume(self) -> None:
        self._pump_scheduled = False
        self._pump()

    def _pump(self) -> None:
        channel = self._channel
        budget = _SLICE
        while self._backlog and self._ready and channel is not None:
            budget -= 1
            if budget < 0:
                if not self._pump_scheduled:
                    self._pump_scheduled = True
                    self._link.call_later(0, self._resume)
                return
            message = self._backlog.popleft()
            if message.batch.abandoned:
                message.settle("not published: the caller stopped waiting (confirm_timeout)")
                continue
            exchange = message.exchange
            if exchange and exchange not in self._declared:
                parked = self._parked.get(exchange)
                if parked is not None:
                    parked.append(message)
                    continue
                self._parked[exchange] = [message]
                self._declaring.append(exchange)
                channel.exchange_declare(
                    exchange, "topic", durable=True, callback=functools.partial(self._on_declared, channel, exchange)
                )
                continue
            self._send(channel, message)

    def _on_declared(self, channel: Channel, exchange: str, frame: object) -> None:
        if channel is not self._channel:
            return
        if self._declaring and self._declaring[0] == exchange:
            self._declaring.popleft()
        self._declared.add(exchange)
        for message in self._parked.pop(exchange, []):
            if self._channel is not channel:
                self._backlog.appendleft(message)
            else:
                self._send(channel, message)

    def _send(self, channel: Channel, message: _Message) -> None:
        try:
            channel.basic_publish(
                message.exchange, message.routing_key, message.body, message.properties, message.mandatory
            )
        except Exception as exc:  # the channel died under us; its close callback re-publishes
            log.debug("publish failed on a closing channel: %r", exc)
            self._backlog.appendleft(message)
            self._ready = False
            return
        message.tries += 1
        tag = self._next_tag
        self._next_tag += 1
        self._unconfirmed[tag] = message
        self._order.append(tag)

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        tag: int = method.delivery_tag
        if method.multiple:
            while self._order and self._order[0] <= tag:
                message = self._unconfirmed.pop(self._order.popleft(), None)
                if message is not None:
                    self._confirmed(message, ok)
        else:
            message = self._unconfirmed.pop(tag, None)
            if message is not None:
                self._confirmed(message, ok)
            while self._order and self._order[0] not in self._unconfirmed:
                self._order.popleft()

    @staticmethod
    def _confirmed(message: _Message, ok: bool) -> None:
        if not ok:
            message.settle("the broker refused the message (basic.nack); it is not stored")
        else:
            message.settle(message.returned)

    def _on_return(
        self, channel: Channel, method: pika.spec.Basic.Return, properties: pika.BasicProperties, body: bytes
    ) -> None:
        # The return of a message comes before its confirm: find the oldest unconfirmed match.
        for message in self._unconfirmed.values():
            if (
                message.mandatory
                and message.returned is None
                and message.routing_key == method.routing_key
                and message.properties.message_id == properties.message_id
            ):
                where = f"queue {method.routing_key!r}" if not method.exchange else f"exchange {method.exchange!r}"
                message.returned = (
                    f"no queue took it ({method.reply_code} {method.reply_text} for {where}); "
                    "provision the service that consumes that queue first"
                )
                return

    def _lost(self, reason: str, *, declare_failed: bool = False) -> None:
        """The channel is gone: re-publish what it did not confirm, at most once more."""
        self._channel = None
        self._opening = False
        self._ready = False
        refused = self._declaring[0] if declare_failed and self._declaring else None
        self._declaring.clear()
        self._declared.clear()
        again: list[_Message] = []
        for message in self._unconfirmed.values():
            if message.tries >= _TRIES:
                message.settle(f"the connection to the broker was lost before it confirmed the message ({reason})")
            else:
                again.append(message)
        self._unconfirmed.clear()
        self._order.clear()
        for exchange, messages in self._parked.items():
            if exchange == refused:
                for message in messages:
                    message.settle(f"cannot declare the topic exchange {exchange!r}: {reason}")
            else:
                again.extend(messages)
        self._parked.clear()
        self._backlog.extendleft(reversed(again))
        if self._link.closing:
            with self._lock:
                # A wake-up queued on this loop will never run: let the next publish start a new one.
                self._wake_pending = False
                arrived, self._incoming = self._incoming, deque()
            self._backlog.extend(arrived)
            self._fail_backlog(f"the backend was closed before the broker confirmed the message ({reason})")

    def _fail_backlog(self, error: str) -> None:
        while self._backlog:
            self._backlog.popleft().settle(error)
