"""The envelope: a message body plus the headers that travel with it.

Backends move envelopes and map their fields onto native attributes (AMQP
properties and headers, SNS/SQS message attributes, Redis stream fields).
On the wire every field is a string header; the names are the constants
below and are documented in ``docs/wire-format.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

MESSAGE_ID = "message-id"
MANIFEST = "manifest"
CONTENT_TYPE = "content-type"
SERIALIZER = "serializer"
CORRELATION_ID = "correlation-id"
CAUSATION_ID = "causation-id"
TIMESTAMP = "timestamp"
ATTEMPT = "attempt"
GROUP_ID = "group-id"

#: Headers the bus adds when it dead-letters a message.
ERROR_REASON = "error-reason"
ERROR_TYPE = "error-type"
ERROR_MESSAGE = "error-message"
ERROR_TRACEBACK = "error-traceback"
ERROR_HANDLER = "error-handler"
ERROR_ATTEMPT = "error-attempt"
ERROR_QUEUE = "error-queue"
ERROR_SERVICE = "error-service"
DEAD_LETTERED_AT = "dead-lettered-at"
ERROR_HEADERS = (
    ERROR_REASON,
    ERROR_TYPE,
    ERROR_MESSAGE,
    ERROR_TRACEBACK,
    ERROR_HANDLER,
    ERROR_ATTEMPT,
    ERROR_QUEUE,
    ERROR_SERVICE,
    DEAD_LETTERED_AT,
)

STANDARD_HEADERS = frozenset(
    {MESSAGE_ID, MANIFEST, CONTENT_TYPE, SERIALIZER, CORRELATION_ID, CAUSATION_ID, TIMESTAMP, ATTEMPT, GROUP_ID}
)


def new_message_id() -> str:
    """A random 128-bit id, as 32 hex digits."""
    return os.urandom(16).hex()


@attrs.define
class Envelope:
    """One message on the wire: body bytes and its headers.

    Treat it as a value: never change one in place (the same envelope may sit
    in several queues); make a changed copy with ``attrs.evolve``. (It is not
    frozen because a frozen attrs class costs 3 µs more per message.)

    ``attempt`` is 1 on the first delivery and grows with each retry.
    ``correlation_id`` is shared by every message of one flow (it defaults to
    the first message's id); ``causation_id`` is the id of the message whose
    handler published this one. ``headers`` holds everything else: user
    headers and, on dead letters, the ``error-*`` headers.
    """

    body: bytes
    message_id: str
    manifest: str
    content_type: str = "application/json"
    serializer: str = "json"
    correlation_id: str = ""
    causation_id: str | None = None
    timestamp: float = 0.0
    attempt: int = 1
    group_id: str | None = None
    headers: dict[str, str] = attrs.field(factory=dict)

    def to_wire(self) -> dict[str, str]:
        """All fields except the body as one flat ``str -> str`` mapping."""
        wire = dict(self.headers)
        wire[MESSAGE_ID] = self.message_id
        wire[MANIFEST] = self.manifest
        wire[CONTENT_TYPE] = self.content_type
        wire[SERIALIZER] = self.serializer
        wire[CORRELATION_ID] = self.correlation_id
        wire[TIMESTAMP] = repr(self.timestamp)
        wire[ATTEMPT] = str(self.attempt)
        if self.causation_id is not None:
            wire[CAUSATION_ID] = self.causation_id
        if self.group_id is not None:
            wire[GROUP_ID] = self.group_id
        return wire

    @classmethod
    def from_wire(cls, body: bytes, wire: Mapping[str, Any], **overrides: Any) -> Envelope:
        """Rebuild an envelope from wire headers, leniently.

        It never raises: a missing or malformed field gets a neutral value
        (an empty manifest, attempt 1, a fresh message id) so that the
        dispatcher can still dead-letter the message with a reason instead
        of crashing. ``overrides`` win over the headers (backends use it for
        values they know natively, such as a receive count).
        """
        fields: dict[str, Any] = {
            "body": body,
            "message_id": _text(wire.get(MESSAGE_ID)) or new_message_id(),
            "manifest": _text(wire.get(MANIFEST)),
            "content_type": _text(wire.get(CONTENT_TYPE)),
            "serializer": _text(wire.get(SERIALIZER)),
            "correlation_id": _text(wire.get(CORRELATION_ID)),
            "causation_id": _text(wire.get(CAUSATION_ID)) or None,
            "timestamp": _number(wire.get(TIMESTAMP), float, 0.0),
            "attempt": max(_number(wire.get(ATTEMPT), int, 1), 1),
            "group_id": _text(wire.get(GROUP_ID)) or None,
            "headers": {str(k): _text(v) for k, v in wire.items() if k not in STANDARD_HEADERS},
        }
        fields.update(overrides)
        if not fields["correlation_id"]:
            fields["correlation_id"] = fields["message_id"]
        return cls(**fields)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _number(value: Any, kind: type[int] | type[float], default: Any) -> Any:
    try:
        return kind(_text(value))
    except (TypeError, ValueError):
        return default
