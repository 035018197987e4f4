"""Testing: a synchronous in-memory session, and helpers for background mode.

Inside ``with bus.testing() as t:`` publishing is synchronous: ``publish``
returns after every handler it triggered, and every handler of the messages
those handlers published, have run (breadth-first, in publish order). The
real topology is used, so a service sees only the types it subscribes to.
Retries happen at once (the backoff delay is recorded, not waited for).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from eventbus.backends.base import Consumer, DeliveryHandler
from eventbus.backends.memory import MemoryBroker
from eventbus.dispatch import Dispatcher, Outcome
from eventbus.envelope import ERROR_REASON, Envelope, new_message_id
from eventbus.errors import ConfigurationError, PublishError
from eventbus.specs import message_spec
from eventbus.topology import Topology

if TYPE_CHECKING:
    from eventbus.backends.base import Backend
    from eventbus.bus import Bus

T = TypeVar("T")


@attrs.define
class Handled:
    """A handler ran successfully on a message."""

    handler: str
    message: Any
    envelope: Envelope


@attrs.define
class HandlerError:
    """A handler raised; ``action`` is what the bus did about it (retry, dead_letter, drop)."""

    handler: str
    error: BaseException
    action: str
    envelope: Envelope


@attrs.define
class DeadLetter:
    """A message that was dead-lettered, with the reason and its ``error-*`` headers."""

    queue: str
    reason: str
    envelope: Envelope

    @property
    def headers(self) -> dict[str, str]:
        """All headers of the dead letter, including ``error-*``."""
        return self.envelope.to_wire()


@attrs.define
class Retried:
    """A message scheduled for another attempt after ``delay`` seconds."""

    queue: str
    delay: float
    envelope: Envelope


class _Delivery:
    __slots__ = ("_session", "envelope", "queue")

    def __init__(self, session: Testing, queue: str, envelope: Envelope) -> None:
        self._session = session
        self.queue = queue
        self.envelope = envelope

    def ack(self) -> None:
        pass

    def retry(self, envelope: Envelope, delay: float) -> None:
        self._session.retries.append(Retried(self.queue, delay, envelope))
        self._session._pending.append((self.queue, envelope))

    def dead_letter(self, envelope: Envelope) -> None:
        reason = envelope.headers.get(ERROR_REASON, "")
        self._session.dead_letters.append(DeadLetter(self.queue, reason, envelope))
        self._session._broker.put(self._session._broker.dead_letter_queue(self.queue), envelope)


class _TestingBackend:
    """The transport a bus uses inside a testing session."""

    def __init__(self, session: Testing) -> None:
        self._session = session

    def provision(self, topology: Topology) -> None:
        self._session._broker.declare(topology)

    def publish(self, topic: str, envelope: Envelope) -> None:
        self._session._publish(topic, envelope)

    def publish_many(self, messages: Sequence[tuple[str, Envelope]]) -> None:
        for topic, envelope in messages:
            self._session._publish(topic, envelope, drain=False)
        self._session._drain()

    def send(self, queue: str, envelope: Envelope) -> None:
        self._session._send(queue, envelope)

    def consume(self, queue: str, handler: DeliveryHandler, *, concurrency: int, prefetch: int) -> Consumer:
        raise ConfigurationError("inside bus.testing() messages are handled synchronously; do not start the bus")

    def dead_letters(self, queue: str, limit: int) -> list[Envelope]:
        return self._session._broker.messages(self._session._broker.dead_letter_queue(queue))[:limit]

    def close(self) -> None:
        pass


class Testing:
    """A synchronous in-memory session over one or more buses.

    Use ``bus.testing()`` for one service, or ``Testing(orders_bus,
    payments_bus)`` to run several services' handlers in one session.
    With ``raise_errors=True`` (the default) the first exception a handler
    raises propagates out of ``publish``; with ``False`` failures follow the
    real policy (retries, then dead letter) and are recorded in ``errors``.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, *buses: Bus, raise_errors: bool = True) -> None:
        if not buses:
            raise ConfigurationError("Testing() needs at least one bus")
        self.buses = buses
        self.raise_errors = raise_errors
        #: Every message published during the session, as ``(topic, envelope)``.
        self.envelopes: list[tuple[str, Envelope]] = []
        #: Successful handler runs, in order.
        self.handled: list[Handled] = []
        #: Handler failures, in order.
        self.errors: list[HandlerError] = []
        #: Messages scheduled for another attempt.
        self.retries: list[Retried] = []
        #: Messages moved to a dead-letter queue.
        self.dead_letters: list[DeadLetter] = []
        self._broker = MemoryBroker()
        self._pending: deque[tuple[str, Envelope]] = deque()
        self._dispatchers: dict[str, Dispatcher] = {}
        self._previous: list[Backend] = []
        self._draining = False
        self._active = False

    # -- session --------------------------------------------------------------

    def __enter__(self) -> Testing:
        if self._active:
            raise ConfigurationError("this testing session is already active")
        for bus in self.buses:
            if bus.running:
                raise ConfigurationError(
                    f"{bus!r} is running: its workers would mix with the synchronous session. "
                    "Call bus.stop() first, or do not start the bus in tests"
                )
        transport = _TestingBackend(self)
        for bus in self.buses:
            self._broker.declare(bus.topology())
            for queue, dispatcher in bus.dispatchers().items():
                self._dispatchers[queue] = dispatcher
            self._previous.append(bus._swap_backend(transport))
        self._active = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for bus, previous in zip(self.buses, self._previous, strict=True):
            bus._swap_backend(previous)
        self._previous.clear()
        self._active = False

    # -- what happened ------------------------------------------------------------

    def published(self, message_type: type[T] | None = None) -> list[T]:
        """The messages published so far (of ``message_type``, if given), decoded, in order."""
        found: list[Any] = []
        manifest = None
        if message_type is not None:
            spec = message_spec(message_type)
            if spec is None:
                raise ConfigurationError(f"{message_type.__qualname__} is not a message type")
            manifest = spec.manifest
        for _, envelope in self.envelopes:
            if manifest is None or envelope.manifest == manifest:
                found.append(self._decode(envelope))
        return found

    def handled_by(self, handler: Callable[..., Any] | str) -> list[Any]:
        """The messages one handler (function or name) handled successfully."""
        name = handler if isinstance(handler, str) else f"{handler.__module__}.{handler.__qualname__}"
        return [h.message for h in self.handled if h.handler == name]

    def clear(self) -> None:
        """Forget what was recorded so far."""
        self.envelopes.clear()
        self.handled.clear()
        self.errors.clear()
        self.retries.clear()
        self.dead_letters.clear()

    # -- feeding ------------------------------------------------------------------

    def deliver(self, queue: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Deliver raw bytes and headers to ``queue``, as a foreign producer would."""
        wire = dict(headers or {})
        envelope = Envelope.from_wire(body, wire, message_id=wire.get("message-id") or new_message_id())
        self._send(queue, envelope)

    # -- transport ----------------------------------------------------------------

    def _decode(self, envelope: Envelope) -> Any:
        for bus in self.buses:
            cls = bus._marshaller.type_for(envelope.manifest)
            if cls is not None:
                return bus._marshaller.decode(envelope, cls)
        raise ConfigurationError(f"no bus in this session knows {envelope.manifest!r}")

    def _publish(self, topic: str, envelope: Envelope, *, drain: bool = True) -> None:
        self.envelopes.append((topic, envelope))
        for queue in self._broker.route(topic, envelope.manifest):
            self._pending.append((queue, envelope))
        if drain:
            self._drain()

    def _send(self, queue: str, envelope: Envelope) -> None:
        if not self._broker.has_queue(queue):
            raise PublishError(f"no queue named {queue!r} in this testing session")
        self.envelopes.append(("", envelope))
        self._pending.append((queue, envelope))
        self._drain()

    def _drain(self) -> None:
        if self._draining:
            return  # a handler published: the running drain picks it up (breadth-first)
        self._draining = True
        try:
            while self._pending:
                queue, envelope = self._pending.popleft()
                dispatcher = self._dispatchers.get(queue)
                if dispatcher is None:
                    self._broker.put(queue, envelope)  # a queue of a service not in this session
                    continue
                outcome = dispatcher(_Delivery(self, queue, envelope))
                self._record(outcome)
        finally:
            self._draining = False

    def _record(self, outcome: Outcome) -> None:
        envelope = outcome.envelope
        for name in outcome.handled:
            self.handled.append(Handled(name, outcome.message, envelope))
        first_error: BaseException | None = None
        for failure in outcome.failures:
            if failure.error is None:
                continue
            self.errors.append(HandlerError(failure.handler, failure.error, failure.action, envelope))
            first_error = first_error or failure.error
        if first_error is not None and self.raise_errors:
            self._pending.clear()
            raise first_error


def wait_until(condition: Callable[[], Any], timeout: float = 5.0, *, interval: float = 0.01, message: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; return that value.

    An ``AssertionError`` raised by ``condition`` counts as "not yet". On
    timeout it raises ``TimeoutError`` with ``message``, the condition's name
    and the last assertion message, so a failing test says what it waited for.
    """
    deadline = time.monotonic() + timeout
    last: str = ""
    while True:
        try:
            value = condition()
            if value:
                return value
            last = f"last value {value!r}"
        except AssertionError as exc:
            last = f"last assertion: {exc}"
        if time.monotonic() >= deadline:
            raise TimeoutError(_timeout_message(condition, timeout, message, last))
        time.sleep(interval)


async def wait_until_async(
    condition: Callable[[], Any], timeout: float = 5.0, *, interval: float = 0.01, message: str = ""
) -> Any:
    """The ``async`` twin of :func:`wait_until`: it yields to the event loop between polls."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            value = condition()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            last = f"last value {value!r}"
        except AssertionError as exc:
            last = f"last assertion: {exc}"
        if time.monotonic() >= deadline:
            raise TimeoutError(_timeout_message(condition, timeout, message, last))
        await asyncio.sleep(interval)


def _timeout_message(condition: Callable[[], Any], timeout: float, message: str, last: str) -> str:
    name = getattr(condition, "__qualname__", repr(condition))
    what = f"{message} ({name})" if message else name
    return f"waited {timeout:g}s for {what}; {last}"
