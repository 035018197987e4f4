"""Envelopes on AMQP: which fields travel as message properties, which as headers."""

from __future__ import annotations

import logging
from typing import Any

import pika

from eventbus import envelope as names
from eventbus.envelope import Envelope

log = logging.getLogger("eventbus.rabbitmq")

#: Envelope fields carried by AMQP properties rather than headers.
_IN_PROPERTIES = frozenset({names.MESSAGE_ID, names.MANIFEST, names.CONTENT_TYPE, names.CORRELATION_ID})

#: Headers the broker adds on its own (dead-lettering, quorum delivery count). They are
#: dropped on the way in: sending them back would confuse the broker's bookkeeping.
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")

PERSISTENT = 2


def properties(envelope: Envelope) -> pika.BasicProperties:
    """The AMQP properties of ``envelope``: persistent, with every field but the body.

    ``message_id``, ``correlation_id``, ``content_type`` and ``type`` (the
    manifest) are native properties; ``timestamp`` is the native property in
    whole seconds and travels exactly in the ``timestamp`` header; everything
    else is a string header.
    """
    wire = envelope.to_wire()
    headers = {key: value for key, value in wire.items() if key not in _IN_PROPERTIES}
    return pika.BasicProperties(
        message_id=envelope.message_id,
        correlation_id=envelope.correlation_id or None,
        content_type=envelope.content_type or None,
        type=envelope.manifest or None,
        timestamp=int(envelope.timestamp),
        delivery_mode=PERSISTENT,
        headers=headers,
    )


def envelope(body: bytes, props: pika.BasicProperties) -> Envelope:
    """Rebuild the envelope of a received message; never raises (garbage gives a neutral envelope)."""
    try:
        wire: dict[str, Any] = {}
        for key, value in (props.headers or {}).items():
            if not str(key).startswith(_BROKER_HEADERS):
                wire[str(key)] = value
        for key, value in (
            (names.MESSAGE_ID, props.message_id),
            (names.MANIFEST, props.type),
            (names.CONTENT_TYPE, props.content_type),
            (names.CORRELATION_ID, props.correlation_id),
        ):
            if value is not None:
                wire[key] = value
        if names.TIMESTAMP not in wire and props.timestamp is not None:
            wire[names.TIMESTAMP] = props.timestamp
        return Envelope.from_wire(bytes(body), wire)
    except Exception:  # a header table that does not even iterate: let the dispatcher dead-letter it
        log.warning("unreadable AMQP properties %r; passing the message on without them", props, exc_info=True)
        return Envelope.from_wire(bytes(body), {})
