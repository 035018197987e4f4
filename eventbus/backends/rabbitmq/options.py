"""The ``amqp://`` URL: where the broker is, and how the backend uses it.

Options of our own go in the query string next to pika's (``heartbeat``,
``blocked_connection_timeout``, ``ssl_options`` ...), which pass through::

    amqp://user:pass@host:5672/vhost?queue_type=quorum&retry_delays=1,10,60
"""

from __future__ import annotations

import math
import os
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import pika

from eventbus.backends import redact_url
from eventbus.errors import ConfigurationError, EventbusError

QueueType = Literal["classic", "quorum"]

#: The retry delay ladder, in seconds: roughly x3 apart, like the default backoff.
DEFAULT_RETRY_DELAYS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 60.0, 180.0, 600.0, 1800.0, 3600.0)


@attrs.frozen
class Options:
    """A parsed ``amqp://`` URL."""

    url: str
    pika_url: str = attrs.field(repr=False)
    queue_type: QueueType = "classic"
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS
    confirm_timeout: float = 30.0
    connect_timeout: float = 10.0
    connection_name: str = ""

    @classmethod
    def parse(cls, url: str) -> Options:
        """Split ``url`` into our options and pika's connection parameters."""
        parts = urlsplit(url)
        ours: dict[str, str] = {}
        theirs: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in _OPTIONS:
                ours[key] = value
            else:
                theirs.append((key, value))
        where = redact_url(url)
        queue_type = ours.get("queue_type", "classic")
        if queue_type not in ("classic", "quorum"):
            raise ConfigurationError(f"{where}: queue_type must be 'classic' or 'quorum', got {queue_type!r}")
        pika_url = urlunsplit(parts._replace(query=urlencode(theirs)))
        try:
            pika.URLParameters(pika_url)
        except Exception as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        return cls(
            url=url,
            pika_url=pika_url,
            queue_type=queue_type,  # type: ignore[arg-type]
            retry_delays=_delays(ours["retry_delays"], where) if "retry_delays" in ours else DEFAULT_RETRY_DELAYS,
            confirm_timeout=_seconds("confirm_timeout", ours.get("confirm_timeout", "30"), where),
            connect_timeout=_seconds("connect_timeout", ours.get("connect_timeout", "10"), where),
            connection_name=ours.get("connection_name") or f"eventbus-{os.getpid()}",
        )

    def connection_parameters(self, role: str) -> pika.URLParameters:
        """Pika's parameters for one connection, named ``<connection_name>/<role>`` in the management UI."""
        parameters = pika.URLParameters(self.pika_url)
        properties = dict(parameters.client_properties or {})
        properties["connection_name"] = f"{self.connection_name}/{role}"
        parameters.client_properties = properties
        return parameters


_OPTIONS = frozenset({"queue_type", "retry_delays", "confirm_timeout", "connect_timeout", "connection_name"})


def _seconds(name: str, text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise ConfigurationError(f"{where}: {name} must be a positive number of seconds, got {text!r}")
    return value


def _delays(text: str, where: str) -> tuple[float, ...]:
    delays = sorted({_seconds("retry_delays", item.strip(), where) for item in text.split(",") if item.strip()})
    if not delays:
        raise ConfigurationError(f"{where}: retry_delays needs at least one delay, e.g. retry_delays=1,10,60")
    if any(d < 0.001 for d in delays):
        raise ConfigurationError(f"{where}: retry_delays must be at least 0.001s (RabbitMQ TTLs are milliseconds)")
    return tuple(delays)


class BrokerUnavailableError(EventbusError, ConnectionError):
    """The broker could not be reached (or dropped the connection) during a synchronous operation."""
