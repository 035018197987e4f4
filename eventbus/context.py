"""The handler's view of the message being handled."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import Any, Protocol

from eventbus.envelope import Envelope

#: The envelope whose handler is running in this thread / task, if any.
#: ``Bus.publish`` reads it so that messages published from inside a
#: handler carry the flow's correlation id even without ``ctx``.
current_envelope: contextvars.ContextVar[Envelope | None] = contextvars.ContextVar(
    "eventbus_current_envelope", default=None
)


class _Publisher(Protocol):
    def _publish(self, message: Any, *, parent: Envelope | None, headers: Mapping[str, str] | None) -> str: ...

    def _send(self, queue: str, message: Any, *, parent: Envelope | None, headers: Mapping[str, str] | None) -> str: ...


class Context:
    """Passed as the second argument to handlers that take ``(event, ctx)``.

    It exposes the envelope's headers and publishes follow-up messages that
    keep the flow's correlation id and name this message as their cause.
    """

    __slots__ = ("_bus", "envelope", "handler", "queue")

    def __init__(self, bus: _Publisher, envelope: Envelope, handler: str, queue: str) -> None:
        self._bus = bus
        self.envelope = envelope
        self.handler = handler
        self.queue = queue

    @property
    def message_id(self) -> str:
        """Id of the message being handled."""
        return self.envelope.message_id

    @property
    def correlation_id(self) -> str:
        """Id shared by every message of this flow."""
        return self.envelope.correlation_id

    @property
    def causation_id(self) -> str | None:
        """Id of the message whose handler published this one, if any."""
        return self.envelope.causation_id

    @property
    def manifest(self) -> str:
        """Wire name of the message type."""
        return self.envelope.manifest

    @property
    def attempt(self) -> int:
        """1 on the first delivery, 2 on the first retry, and so on."""
        return self.envelope.attempt

    @property
    def timestamp(self) -> float:
        """When the message was first published (seconds since the epoch)."""
        return self.envelope.timestamp

    @property
    def headers(self) -> Mapping[str, str]:
        """User headers that came with the message."""
        return self.envelope.headers

    def publish(self, message: Any, *, headers: Mapping[str, str] | None = None) -> str:
        """Publish ``message`` to its topic as a consequence of this one; return its id."""
        return self._bus._publish(message, parent=self.envelope, headers=headers)

    def send(self, queue: str, message: Any, *, headers: Mapping[str, str] | None = None) -> str:
        """Send ``message`` straight to ``queue`` as a consequence of this one; return its id."""
        return self._bus._send(queue, message, parent=self.envelope, headers=headers)

    def __repr__(self) -> str:
        return f"<Context {self.manifest} id={self.message_id} attempt={self.attempt} handler={self.handler}>"
