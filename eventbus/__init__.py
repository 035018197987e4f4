"""eventbus: declare messages and handlers; the bus wires the broker.

::

    from attrs import frozen
    from eventbus import Bus, message, subscribe

    @message(topic="orders")
    @frozen
    class OrderPlaced:
        order_id: str

    @subscribe(OrderPlaced)
    def charge(event: OrderPlaced) -> None: ...

    bus = Bus(service="payments")
    bus.start()
    bus.publish(OrderPlaced("o-1"))
"""

from eventbus.bus import Bus
from eventbus.codecs import JsonSerializer, PickleSerializer, Serializer
from eventbus.codecs.json import make_converter
from eventbus.context import Context
from eventbus.dedup import Claim, DedupCache, MemoryDedupCache
from eventbus.envelope import Envelope
from eventbus.errors import (
    ConfigurationError,
    DeclarationError,
    DecodeError,
    EventbusError,
    PublishError,
    SerializationError,
    TopologyConflictError,
)
from eventbus.middleware import Middleware
from eventbus.redis_dedup import RedisDedupCache
from eventbus.registry import Registry, default_registry, message, subscribe
from eventbus.retry import Backoff
from eventbus.testing import DeadLetter, Handled, HandlerError, Retried, Testing, wait_until, wait_until_async
from eventbus.topology import QueuePlan, Subscription, Topology

__version__ = "0.1.0"

# Integrations whose dependencies are optional: imported on first use.
_LAZY = {
    "OpenTelemetryMiddleware": ("eventbus.contrib.otel", "otel"),
    "PrometheusMiddleware": ("eventbus.contrib.prometheus", "prometheus"),
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'eventbus' has no attribute {name!r}")
    module_name, extra = _LAZY[name]
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"eventbus.{name} needs an extra dependency ({exc.name}): pip install eventbus[{extra}]"
        ) from exc
    return getattr(module, name)


__all__ = [
    "Backoff",
    "Bus",
    "Claim",
    "ConfigurationError",
    "Context",
    "DeadLetter",
    "DeclarationError",
    "DecodeError",
    "DedupCache",
    "Envelope",
    "EventbusError",
    "Handled",
    "HandlerError",
    "JsonSerializer",
    "MemoryDedupCache",
    "Middleware",
    "OpenTelemetryMiddleware",
    "PickleSerializer",
    "PrometheusMiddleware",
    "PublishError",
    "QueuePlan",
    "RedisDedupCache",
    "Registry",
    "Retried",
    "SerializationError",
    "Serializer",
    "Subscription",
    "Testing",
    "Topology",
    "TopologyConflictError",
    "default_registry",
    "make_converter",
    "message",
    "subscribe",
    "wait_until",
    "wait_until_async",
]
