"""Backends: the brokers eventbus runs on, chosen by URL scheme."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit, urlunsplit

from eventbus.backends.base import Backend, Consumer, Delivery, DeliveryHandler
from eventbus.errors import ConfigurationError

__all__ = ["Backend", "Consumer", "Delivery", "DeliveryHandler", "from_url", "redact_url"]

# scheme -> (module, class, pip extra)
_SCHEMES: dict[str, tuple[str, str, str]] = {
    "memory": ("eventbus.backends.memory", "MemoryBackend", ""),
    "amqp": ("eventbus.backends.rabbitmq", "RabbitMQBackend", "rabbitmq"),
    "amqps": ("eventbus.backends.rabbitmq", "RabbitMQBackend", "rabbitmq"),
    "redis": ("eventbus.backends.redis", "RedisBackend", "redis"),
    "rediss": ("eventbus.backends.redis", "RedisBackend", "redis"),
    "sqs": ("eventbus.backends.sqs", "SqsBackend", "sqs"),
}


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def from_url(url: str) -> Backend:
    """Build the backend for ``url`` (``memory://``, ``amqp://``, ``sqs://``, ``redis://``)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        known = ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        raise ConfigurationError(f"no backend for {redact_url(url)!r}; known schemes: {known}")
    module_name, class_name, extra = _SCHEMES[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"the {scheme}:// backend needs an extra dependency ({exc.name}); install eventbus[{extra}]"
        ) from exc
    backend: Backend = getattr(module, class_name).from_url(url)
    return backend
