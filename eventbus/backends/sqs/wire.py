"""How an envelope travels on SNS and SQS: a text body plus message attributes.

SQS delivers at most 10 message attributes per message, so the envelope
fields that consumers filter or route on get an attribute each and every
other header (user headers, ``error-*`` headers) is packed into one JSON
attribute. ``docs/backends/sqs.md`` documents the mapping for producers and
consumers that do not use eventbus.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from eventbus import envelope as h
from eventbus.envelope import Envelope
from eventbus.errors import PublishError

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef

#: SNS and SQS refuse messages larger than this (body plus attributes).
MAX_MESSAGE_SIZE = 256 * 1024
#: Envelope fields sent as message attributes of their own (``String``).
OWN_ATTRIBUTES = (
    h.MANIFEST,
    h.MESSAGE_ID,
    h.CONTENT_TYPE,
    h.SERIALIZER,
    h.CORRELATION_ID,
    h.CAUSATION_ID,
    h.TIMESTAMP,
    h.ATTEMPT,
)
#: The attribute holding every other header as a JSON object of strings.
HEADERS = "headers"
#: Set to ``base64`` when the body is not valid SQS text and was encoded.
BODY_ENCODING = "body-encoding"
#: The message group of FIFO messages whose type has no ``group_by``.
DEFAULT_GROUP = "default"

# Characters SQS accepts in a body or attribute (XML 1.0 characters).
_NOT_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# What SQS accepts as a FIFO deduplication id.
_DEDUP_ID = re.compile(r"^[!-~]{1,128}$")


@attrs.frozen
class Outgoing:
    """An envelope ready for Publish / SendMessage (and their batch forms)."""

    envelope: Envelope
    body: str
    attributes: dict[str, MessageAttributeValueTypeDef]
    group_id: str | None
    dedup_id: str | None

    @property
    def size(self) -> int:
        """Bytes counted against the size limit: body, attribute names, types and values."""
        size = len(self.body.encode())
        for name, value in self.attributes.items():
            size += len(name.encode()) + len(value["DataType"]) + len(value.get("StringValue", "").encode())
        return size

    def fifo_arguments(self) -> dict[str, str]:
        """``MessageGroupId`` and ``MessageDeduplicationId`` when the target is FIFO."""
        if self.group_id is None or self.dedup_id is None:
            return {}
        return {"MessageGroupId": self.group_id, "MessageDeduplicationId": self.dedup_id}

    def check_size(self, target: str) -> None:
        """Raise ``PublishError`` naming the message type when it is over the limit."""
        if self.size > MAX_MESSAGE_SIZE:
            raise PublishError(
                f"{self.envelope.manifest or 'message'} {self.envelope.message_id} is {self.size} bytes "
                f"(body and attributes), over the {MAX_MESSAGE_SIZE}-byte limit of SNS/SQS, so it cannot go to "
                f"{target}; make the message smaller (store large payloads elsewhere and send a reference)"
            )


def encode(envelope: Envelope, *, fifo: bool, dedup_id: str | None = None) -> Outgoing:
    """Map ``envelope`` onto a message for a standard (``fifo=False``) or FIFO target.

    On FIFO the group id travels as ``MessageGroupId`` (``default`` when the
    type has no ``group_by``) and the message id is the deduplication id
    unless ``dedup_id`` is given.
    """
    if not envelope.body:
        raise PublishError(
            f"{envelope.manifest or 'message'} {envelope.message_id} has an empty body, which SNS and SQS refuse"
        )
    wire = envelope.to_wire()
    # On FIFO the group is native; elsewhere it is just another header.
    group_id = wire.pop(h.GROUP_ID, None) if fifo else None
    own = {name: wire.pop(name, "") for name in OWN_ATTRIBUTES}
    attributes = {name: _string(value) for name, value in own.items() if value}  # SQS refuses empty values
    if wire:
        attributes[HEADERS] = _string(json.dumps(wire, sort_keys=True, separators=(",", ":")))
    body = _as_text(envelope.body)
    if body is None:
        body = base64.b64encode(envelope.body).decode("ascii")
        attributes[BODY_ENCODING] = _string("base64")
    if not fifo:
        return Outgoing(envelope, body, attributes, None, None)
    return Outgoing(envelope, body, attributes, group_id or DEFAULT_GROUP, dedup_id or fifo_dedup_id(envelope))


def fifo_dedup_id(envelope: Envelope) -> str:
    """The message id, or a digest of it when SQS would not accept it as a deduplication id."""
    if _DEDUP_ID.match(envelope.message_id):
        return envelope.message_id
    return hashlib.sha256(envelope.message_id.encode()).hexdigest()


def decode(message: Mapping[str, Any], *, count_attempts: bool) -> Envelope:
    """Rebuild the envelope of a received SQS message; never raises.

    Accepts raw deliveries (the envelope in message attributes) and SNS
    notifications wrapped in SNS's JSON envelope (raw delivery off). With
    ``count_attempts`` the attempt is SQS's ``ApproximateReceiveCount``.
    Without a ``message-id`` attribute the SNS or SQS message id stands in,
    so that redeliveries keep one id.
    """
    body = str(message.get("Body", ""))
    attributes: dict[str, Any] = {
        str(name): _sqs_value(value) for name, value in (message.get("MessageAttributes") or {}).items()
    }
    native_id = message.get("MessageId")
    if h.MANIFEST not in attributes:
        notification = _sns_notification(body)
        if notification is not None:
            body, attributes, native_id = notification
    wire: dict[str, Any] = {}
    packed = attributes.pop(HEADERS, None)
    if packed is not None:
        wire.update(_packed_headers(packed))
    wire.update(attributes)
    encoding = _text(wire.pop(BODY_ENCODING, ""))
    overrides: dict[str, Any] = {}
    system = message.get("Attributes") or {}
    if not wire.get(h.MESSAGE_ID) and native_id:
        overrides["message_id"] = str(native_id)
    if system.get("MessageGroupId"):
        overrides["group_id"] = str(system["MessageGroupId"])
    if count_attempts:
        with contextlib.suppress(TypeError, ValueError):
            overrides["attempt"] = max(int(system.get("ApproximateReceiveCount", 1)), 1)
    return Envelope.from_wire(_body(body, encoding), wire, **overrides)


def _string(value: str) -> MessageAttributeValueTypeDef:
    return {"DataType": "String", "StringValue": value}


def _as_text(body: bytes) -> str | None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if _NOT_TEXT.search(text) else text


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _sqs_value(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return value
    if "StringValue" in value:
        return value["StringValue"]
    return value.get("BinaryValue")


def _sns_notification(body: str) -> tuple[str, dict[str, Any], Any] | None:
    """``(message, attributes, SNS message id)`` of an SNS JSON envelope, else None."""
    if not body.startswith("{"):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("Type") != "Notification" or "TopicArn" not in data:
        return None
    attributes: dict[str, Any] = {}
    for name, value in (data.get("MessageAttributes") or {}).items():
        if not isinstance(value, dict):
            continue
        if value.get("Type") == "Binary":
            try:
                attributes[name] = base64.b64decode(str(value.get("Value", "")), validate=True)
            except (binascii.Error, ValueError):
                continue
        else:
            attributes[name] = value.get("Value")
    return _text(data.get("Message")), attributes, data.get("MessageId")


def _packed_headers(packed: Any) -> dict[str, Any]:
    try:
        headers = json.loads(_text(packed))
    except ValueError:
        return {HEADERS: packed}  # keep it visible rather than lose it
    if not isinstance(headers, dict):
        return {HEADERS: packed}
    return {str(key): value if isinstance(value, str) else json.dumps(value) for key, value in headers.items()}


def _body(text: str, encoding: str) -> bytes:
    if encoding == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass  # the dispatcher will report the body as undecodable
    return text.encode()
