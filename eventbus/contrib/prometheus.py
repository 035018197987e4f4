"""Prometheus metrics for a bus: install ``eventbus[prometheus]`` and add ``PrometheusMiddleware()``.

Metrics (names start with ``namespace``, default ``eventbus``):

- ``eventbus_published_total{topic, manifest}``
- ``eventbus_handled_total{queue, handler, manifest}`` — handler runs that succeeded
- ``eventbus_failed_total{queue, handler, manifest}`` — handler runs that raised
- ``eventbus_retried_total{queue, manifest}`` — messages sent back for another attempt
- ``eventbus_dead_lettered_total{queue, manifest, reason}``
- ``eventbus_handler_duration_seconds{queue, handler, manifest}`` — a histogram
- ``eventbus_in_flight{queue, handler}`` — handler runs in progress
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from eventbus.context import Context
from eventbus.envelope import Envelope
from eventbus.middleware import Middleware
from eventbus.specs import message_spec

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class PrometheusMiddleware(Middleware):
    """Counts what a bus publishes and handles."""

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        *,
        namespace: str = "eventbus",
        buckets: Sequence[float] = DURATION_BUCKETS,
    ) -> None:
        def name(metric: str) -> str:
            return f"{namespace}_{metric}"

        self.published = Counter(name("published"), "Messages published.", ["topic", "manifest"], registry=registry)
        handler_labels = ["queue", "handler", "manifest"]
        self.handled = Counter(name("handled"), "Handler runs that succeeded.", handler_labels, registry=registry)
        self.failed = Counter(name("failed"), "Handler runs that raised.", handler_labels, registry=registry)
        self.retried = Counter(
            name("retried"), "Messages sent back for another attempt.", ["queue", "manifest"], registry=registry
        )
        self.dead_lettered = Counter(
            name("dead_lettered"),
            "Messages moved to a dead-letter queue.",
            ["queue", "manifest", "reason"],
            registry=registry,
        )
        self.duration = Histogram(
            name("handler_duration_seconds"),
            "How long handler runs take.",
            handler_labels,
            buckets=buckets,
            registry=registry,
        )
        self.in_flight = Gauge(name("in_flight"), "Handler runs in progress.", ["queue", "handler"], registry=registry)

    def after_publish(self, message: Any, envelope: Envelope) -> None:
        """Count a published message."""
        spec = message_spec(type(message))
        self.published.labels(spec.topic if spec else "", envelope.manifest).inc()

    def before_handle(self, ctx: Context, message: Any) -> None:
        """One more handler run in progress."""
        self.in_flight.labels(ctx.queue, ctx.handler).inc()

    def after_handle(self, ctx: Context, message: Any, duration: float) -> None:
        """Count a success and its duration."""
        self.in_flight.labels(ctx.queue, ctx.handler).dec()
        self.handled.labels(ctx.queue, ctx.handler, ctx.manifest).inc()
        self.duration.labels(ctx.queue, ctx.handler, ctx.manifest).observe(duration)

    def handle_failed(self, ctx: Context, message: Any, error: BaseException, duration: float) -> None:
        """Count a failure and its duration."""
        self.in_flight.labels(ctx.queue, ctx.handler).dec()
        self.failed.labels(ctx.queue, ctx.handler, ctx.manifest).inc()
        self.duration.labels(ctx.queue, ctx.handler, ctx.manifest).observe(duration)

    def settled(self, queue: str, envelope: Envelope, action: str, reason: str | None) -> None:
        """Count retries and dead letters."""
        if action == "retry":
            self.retried.labels(queue, envelope.manifest).inc()
        elif action == "dead_letter":
            self.dead_lettered.labels(queue, envelope.manifest, reason or "").inc()
