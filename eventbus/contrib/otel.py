"""OpenTelemetry tracing: a span per publish and per handler run, context carried in headers.

Install ``eventbus[otel]`` and add ``OpenTelemetryMiddleware()`` to the bus.
Publishing injects the W3C trace context (``traceparent``) into the
message's headers; handling extracts it, so a flow across services is one
trace. A message published from inside a handler is a child of that
handler's span. Spans opened by sync handler code (database calls...) are
children of the handler span; async handlers run on the bus's event loop
thread, where the span is not current.
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from eventbus.context import Context
from eventbus.envelope import Envelope
from eventbus.middleware import Middleware
from eventbus.specs import message_spec

SYSTEM = "eventbus"


class OpenTelemetryMiddleware(Middleware):
    """Traces publishing and handling with OpenTelemetry."""

    def __init__(
        self, tracer_provider: trace.TracerProvider | None = None, propagator: TextMapPropagator | None = None
    ) -> None:
        self._tracer = trace.get_tracer("eventbus", tracer_provider=tracer_provider)
        self._propagator = propagator
        self._lock = threading.Lock()
        self._publishing: dict[str, Span] = {}
        # (message id, handler) -> (span, token of the attached context)
        self._handling: dict[tuple[str, str], tuple[Span, object]] = {}
        self._by_message: dict[str, Span] = {}

    @property
    def propagator(self) -> TextMapPropagator:
        """The propagator in use (the global one unless given)."""
        return self._propagator or propagate.get_global_textmap()

    def before_publish(self, message: Any, envelope: Envelope) -> None:
        """Start a producer span and inject its context into the headers."""
        spec = message_spec(type(message))
        topic = spec.topic if spec is not None else ""
        parent = None
        if envelope.causation_id is not None:
            with self._lock:
                handler_span = self._by_message.get(envelope.causation_id)
            if handler_span is not None:
                parent = trace.set_span_in_context(handler_span)
        span = self._tracer.start_span(
            f"{topic} publish",
            kind=SpanKind.PRODUCER,
            context=parent,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "publish",
                "messaging.destination.name": topic,
                "messaging.message.id": envelope.message_id,
                "messaging.message.conversation_id": envelope.correlation_id,
                "eventbus.manifest": envelope.manifest,
            },
        )
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=trace.set_span_in_context(span))
        envelope.headers.update(carrier)
        with self._lock:
            self._publishing[envelope.message_id] = span

    def after_publish(self, message: Any, envelope: Envelope) -> None:
        """End the producer span."""
        with self._lock:
            span = self._publishing.pop(envelope.message_id, None)
        if span is not None:
            span.end()

    def publish_failed(self, message: Any, envelope: Envelope, error: BaseException) -> None:
        """End the producer span with the error."""
        with self._lock:
            span = self._publishing.pop(envelope.message_id, None)
        if span is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
            span.end()

    def before_handle(self, ctx: Context, message: Any) -> None:
        """Start a consumer span, child of the publisher's context, and make it current."""
        parent = self.propagator.extract(dict(ctx.headers))
        span = self._tracer.start_span(
            f"{ctx.queue} process",
            kind=SpanKind.CONSUMER,
            context=parent,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.destination.name": ctx.queue,
                "messaging.message.id": ctx.message_id,
                "messaging.message.conversation_id": ctx.correlation_id,
                "eventbus.manifest": ctx.manifest,
                "eventbus.handler": ctx.handler,
                "eventbus.attempt": ctx.attempt,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        with self._lock:
            self._handling[(ctx.message_id, ctx.handler)] = (span, token)
            self._by_message[ctx.message_id] = span

    def after_handle(self, ctx: Context, message: Any, duration: float) -> None:
        """End the consumer span."""
        self._finish(ctx, None)

    def handle_failed(self, ctx: Context, message: Any, error: BaseException, duration: float) -> None:
        """End the consumer span with the error."""
        self._finish(ctx, error)

    def _finish(self, ctx: Context, error: BaseException | None) -> None:
        with self._lock:
            entry = self._handling.pop((ctx.message_id, ctx.handler), None)
            self._by_message.pop(ctx.message_id, None)
        if entry is None:
            return
        span, token = entry
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type]
