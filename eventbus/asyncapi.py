"""An AsyncAPI 3.0 document of one service: its topics, queues, messages and operations.

:func:`document` describes a :class:`~eventbus.Bus` as plain data:

- a channel per topic, with every declared message type published on it,
  and a channel per queue of the service, with the types its handlers take;
- a message per message type: its manifest, content type, the envelope
  headers (``docs/wire-format.md``) and a JSON Schema of its fields
  (:mod:`eventbus.schema`);
- a ``send`` operation per topic (the bus can publish every declared type;
  which ones a handler really publishes is not declared anywhere) and a
  ``receive`` operation per queue, listing the handlers;
- the server from the bus URL (never its credentials) and the bindings of
  the protocol (AMQP exchanges and queues, SNS topics and SQS queues).

Write it with :func:`eventbus.yaml_writer.to_yaml` or ``json.dumps``, or run
``eventbus asyncapi app:bus -o asyncapi.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import eventbus
from eventbus import envelope as wire
from eventbus.schema import SchemaBuilder
from eventbus.specs import HandlerSpec, MessageSpec, message_spec
from eventbus.topology import QueuePlan, queue_name

if TYPE_CHECKING:
    from eventbus.bus import Bus

ASYNCAPI_VERSION = "3.0.0"
HEADERS_SCHEMA = "EnvelopeHeaders"
_ID = re.compile(r"[^A-Za-z0-9_-]+")

_HEADER_DOCS = {
    wire.MESSAGE_ID: "Unique id of the message (32 hex digits from eventbus).",
    wire.MANIFEST: "The message type's wire name; consumers route on it.",
    wire.CONTENT_TYPE: "Media type of the body, e.g. application/json.",
    wire.SERIALIZER: "Name of the serializer that wrote the body; wins over content-type.",
    wire.CORRELATION_ID: "Shared by every message of one flow (the first message's id).",
    wire.CAUSATION_ID: "Id of the message whose handler published this one.",
    wire.TIMESTAMP: "Seconds since the epoch when first published, e.g. 1714557600.25.",
    wire.ATTEMPT: "1 on the first delivery, then 2, 3... on retries.",
    wire.GROUP_ID: "The message group on a FIFO topic.",
    wire.ERROR_REASON: "Dead letters: why, e.g. handler-failed, unknown-manifest, undecodable.",
    wire.ERROR_TYPE: "Dead letters: the exception class, e.g. builtins.ValueError.",
    wire.ERROR_MESSAGE: "Dead letters: the exception message.",
    wire.ERROR_TRACEBACK: "Dead letters: the end of the traceback.",
    wire.ERROR_HANDLER: "Dead letters: the handler that failed.",
    wire.ERROR_ATTEMPT: "Dead letters: the attempt that failed.",
    wire.ERROR_QUEUE: "Dead letters: the queue the message came from.",
    wire.ERROR_SERVICE: "Dead letters: the service that dead-lettered it.",
    wire.DEAD_LETTERED_AT: "Dead letters: seconds since the epoch.",
}
_NUMERIC_HEADERS = {
    wire.TIMESTAMP: r"^[0-9]+(\.[0-9]+)?$",
    wire.ATTEMPT: r"^[1-9][0-9]*$",
    wire.ERROR_ATTEMPT: r"^[1-9][0-9]*$",
    wire.DEAD_LETTERED_AT: r"^[0-9]+(\.[0-9]+)?$",
}


def headers_schema() -> dict[str, Any]:
    """The JSON Schema of the envelope headers: every value is a string; user headers are allowed."""
    properties: dict[str, Any] = {}
    for name, text in _HEADER_DOCS.items():
        properties[name] = {"type": "string", "description": text}
        if name in _NUMERIC_HEADERS:
            properties[name]["pattern"] = _NUMERIC_HEADERS[name]
    return {
        "type": "object",
        "title": "Envelope headers",
        "description": "The headers every eventbus message carries (see the wire format); any other "
        "header is a user header.",
        "properties": properties,
        "required": [wire.MANIFEST],
        "additionalProperties": {"type": "string"},
    }


def document(bus: Bus, *, title: str | None = None, version: str = "1.0.0") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``bus`` as plain data (dicts, lists, strings...)."""
    topology = bus.topology()
    types = _message_types(bus)
    builder = SchemaBuilder(ref_prefix="#/components/schemas/", reserved=[HEADERS_SCHEMA])
    channel_ids = _Ids()
    message_ids = _Ids()
    op_ids = _Ids()

    messages: dict[str, Any] = {}
    message_key: dict[type[Any], str] = {}
    for spec in types:
        key = message_ids.new(spec.manifest)
        message_key[spec.cls] = key
        messages[key] = _message(bus, spec, builder)

    servers = _servers(bus.url)
    scheme = urlsplit(bus.url).scheme.lower()
    prefix = parse_qs(urlsplit(bus.url).query).get("prefix", [""])[0] if scheme == "sqs" else ""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    for topic in topology.topics:
        on_topic = [spec for spec in types if spec.topic == topic]
        cid = channel_ids.new(topic)
        channels[cid] = _channel(
            address=prefix + topic,
            description=f"Topic {topic!r}: every message of these types is published here.",
            keys=[message_key[spec.cls] for spec in on_topic],
            bindings=_topic_bindings(scheme, prefix + topic, bus.url),
            servers=[name for name in servers if name != "sqs"],
        )
        if on_topic:
            operations[op_ids.new(f"send-{topic}")] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{cid}"},
                "summary": f"{bus.service} can publish these types to {topic!r}.",
                "messages": [{"$ref": f"#/channels/{cid}/messages/{message_key[s.cls]}"} for s in on_topic],
            }

    handlers_of = _handlers_by_queue(bus)
    for plan in topology.queues:
        handled = handlers_of.get(plan.name, {})
        keys = [message_key[cls] for cls in handled]
        cid = channel_ids.new(f"{plan.name}-queue")
        subscriptions = [s for s in topology.subscriptions if s.queue == plan.name]
        routes = "; ".join(f"{s.topic}: {', '.join(s.manifests)}" for s in subscriptions)
        channels[cid] = _channel(
            address=prefix + plan.name,
            description=f"Queue of service {bus.service!r}, subscribed to {routes}. "
            f"Messages that fail for good go to its dead-letter queue {plan.dead_letter!r}.",
            keys=keys,
            bindings=_queue_bindings(scheme, prefix, plan, bus.url),
            servers=[name for name in servers if name != "sns"],
        )
        taken: dict[HandlerSpec, list[str]] = {}
        for cls, handlers in handled.items():
            for handler in handlers:
                taken.setdefault(handler, []).append(_manifest(cls))
        lines = [f"- `{handler.name}` handles {', '.join(ms)}: {_policy(handler)}" for handler, ms in taken.items()]
        operations[op_ids.new(f"receive-{plan.name}")] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{cid}"},
            "summary": f"{bus.service} handles these types from its queue {plan.name!r}.",
            "description": "\n".join(lines),
            "messages": [{"$ref": f"#/channels/{cid}/messages/{key}"} for key in keys],
        }

    doc: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title or bus.service,
            "version": version,
            "description": f"Messages of the {bus.service!r} service, written by eventbus {eventbus.__version__}.",
        },
        "defaultContentType": "application/json",
    }
    if servers:
        doc["servers"] = servers
    doc["channels"] = channels
    doc["operations"] = operations
    doc["components"] = {
        "schemas": {HEADERS_SCHEMA: headers_schema(), **builder.definitions},
        "messages": messages,
    }
    return doc


# -- pieces -----------------------------------------------------------------------


class _Ids:
    """Unique ids made of letters, digits, '-' and '_' (what AsyncAPI allows as keys)."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def new(self, name: str) -> str:
        base = _ID.sub("_", name) or "_"
        key, n = base, 2
        while key in self._taken:
            key, n = f"{base}_{n}", n + 1
        self._taken.add(key)
        return key


def _manifest(cls: type[Any]) -> str:
    spec = message_spec(cls)
    return spec.manifest if spec is not None else cls.__qualname__


def _message_types(bus: Bus) -> list[MessageSpec]:
    """Every type the bus knows: declared in its registry, or handled by its handlers."""
    specs: dict[type[Any], MessageSpec] = {spec.cls: spec for spec in bus.registry.messages()}
    for handler in bus.handlers:
        for tp in handler.types:
            spec = message_spec(tp)
            if spec is not None:
                specs.setdefault(tp, spec)
    return sorted(specs.values(), key=lambda spec: (spec.topic, spec.manifest))


def _handlers_by_queue(bus: Bus) -> dict[str, dict[type[Any], list[HandlerSpec]]]:
    found: dict[str, dict[type[Any], list[HandlerSpec]]] = {}
    for handler in bus.handlers:
        for tp in handler.types:
            spec = message_spec(tp)
            if spec is not None:
                queue = queue_name(bus.service, handler, spec)
                found.setdefault(queue, {}).setdefault(tp, []).append(handler)
    return {q: dict(sorted(by_type.items(), key=lambda item: _manifest(item[0]))) for q, by_type in found.items()}


def _policy(handler: HandlerSpec) -> str:
    if handler.on_failure == "dead_letter":
        return "a failure dead-letters the message at once."
    if handler.on_failure == "drop":
        return "a failure drops the message."
    return f"up to {handler.retries} retries, the first after {handler.backoff.initial:g}s."


def _message(bus: Bus, spec: MessageSpec, builder: SchemaBuilder) -> dict[str, Any]:
    serializer = bus.registry.get_serializer(bus.registry.serializer_name(spec.cls, bus.serializer))
    message: dict[str, Any] = {
        "name": spec.manifest,
        "title": spec.cls.__name__,
    }
    doc = (spec.cls.__dict__.get("__doc__") or "").strip()
    if doc and not doc.startswith(f"{spec.cls.__name__}("):  # not the signature dataclasses make up
        message["summary"] = doc.splitlines()[0]
    message["contentType"] = serializer.content_type
    message["headers"] = {
        "allOf": [
            {"$ref": f"#/components/schemas/{HEADERS_SCHEMA}"},
            {"type": "object", "properties": {wire.MANIFEST: {"const": spec.manifest}}},
        ]
    }
    message["correlationId"] = {
        "description": "Shared by every message of one flow.",
        "location": f"$message.header#/{wire.CORRELATION_ID}",
    }
    if serializer.content_type == "application/json":
        message["payload"] = builder.ref(spec.cls)
    else:
        message["description"] = (
            f"The body is written by the {serializer.name!r} serializer ({serializer.content_type}); "
            "it has no JSON Schema."
        )
    message["x-eventbus-topic"] = spec.topic
    message["x-eventbus-class"] = f"{spec.cls.__module__}.{spec.cls.__qualname__}"
    return message


def _channel(
    *, address: str, description: str, keys: Iterable[str], bindings: dict[str, Any], servers: list[str]
) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "address": address,
        "description": description,
        "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in keys},
    }
    if servers:
        channel["servers"] = [{"$ref": f"#/servers/{name}"} for name in servers]
    if bindings:
        channel["bindings"] = bindings
    return channel


def _vhost(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _topic_bindings(scheme: str, name: str, url: str) -> dict[str, Any]:
    if scheme in ("amqp", "amqps"):
        exchange = {"name": name, "type": "topic", "durable": True, "autoDelete": False, "vhost": _vhost(url)}
        return {"amqp": {"is": "routingKey", "exchange": exchange, "bindingVersion": "0.3.0"}}
    if scheme == "sqs":
        ordering = {"type": "FIFO" if name.endswith(".fifo") else "standard"}
        return {"sns": {"name": name, "ordering": ordering, "bindingVersion": "0.1.0"}}
    return {}


def _queue_bindings(scheme: str, prefix: str, plan: QueuePlan, url: str) -> dict[str, Any]:
    if scheme in ("amqp", "amqps"):
        queue = {"name": plan.name, "durable": True, "exclusive": False, "autoDelete": False, "vhost": _vhost(url)}
        return {"amqp": {"is": "queue", "queue": queue, "bindingVersion": "0.3.0"}}
    if scheme == "sqs":
        return {
            "sqs": {
                "queue": {"name": prefix + plan.name, "fifoQueue": plan.fifo},
                "deadLetterQueue": {"name": prefix + plan.dead_letter, "fifoQueue": plan.fifo},
                "bindingVersion": "0.2.0",
            }
        }
    return {}


def _host(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return host if parts.port is None else f"{host}:{parts.port}"


def _servers(url: str) -> dict[str, Any]:
    """The broker of ``url`` as AsyncAPI servers; credentials and query options are left out."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("amqp", "amqps"):
        server: dict[str, Any] = {"host": _host(url), "protocol": scheme, "protocolVersion": "0.9.1"}
        vhost = _vhost(url)
        if vhost != "/":
            server["pathname"] = f"/{vhost}"
        server["description"] = f"RabbitMQ, virtual host {vhost!r}."
        return {"rabbitmq": server}
    if scheme in ("redis", "rediss"):
        db = parts.path.strip("/") or "0"
        tls = " over TLS" if scheme == "rediss" else ""
        return {
            "redis": {
                "host": _host(url),
                "pathname": f"/{db}",
                "protocol": "redis",
                "description": f"Redis Streams{tls}, database {db}.",
            }
        }
    if scheme == "sqs":
        query = parse_qs(parts.query)
        endpoint = query.get("endpoint", [""])[0]
        region = query.get("region", [""])[0]
        found: dict[str, Any] = {}
        for service in ("sns", "sqs"):
            if endpoint:
                server = {"host": _host(endpoint), "protocol": service, "description": "A local SNS/SQS server."}
            elif region:
                server = {"host": f"{service}.{region}.amazonaws.com", "protocol": service}
            else:
                server = {
                    "host": f"{service}.{{region}}.amazonaws.com",
                    "protocol": service,
                    "variables": {"region": {"default": "us-east-1", "description": "The AWS region."}},
                }
            found[service] = server
        return found
    return {}
