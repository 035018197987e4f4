from __future__ import annotations

from typing import Any

import attrs
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from eventbus import Bus, Context, OpenTelemetryMiddleware, PrometheusMiddleware, Registry, Testing


@pytest.fixture
def types_(registry: Registry) -> tuple[type, type]:
    @registry.message(topic="orders")
    @attrs.frozen
    class OrderPlaced:
        order_id: str

    @registry.message(topic="payments")
    @attrs.frozen
    class PaymentCharged:
        order_id: str

    return OrderPlaced, PaymentCharged


def test_one_trace_across_two_services(types_: tuple[type, type]) -> None:
    placed, charged = types_
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = OpenTelemetryMiddleware(tracer_provider=provider)
    payments, ledger = Registry(), Registry()

    @payments.subscribe(placed)
    def charge(event: Any, ctx: Context) -> None:
        ctx.publish(charged(event.order_id))

    @ledger.subscribe(charged)
    def book(event: Any) -> None:
        raise ValueError("ledger closed")

    pay_bus = Bus("payments", "memory://", registry=payments, middleware=[tracing])
    ledger_bus = Bus("ledger", "memory://", registry=ledger, middleware=[tracing])
    with Testing(pay_bus, ledger_bus, raise_errors=False):
        pay_bus.publish(placed("o-1"))

    spans = {(s.name, s.attributes.get("eventbus.attempt")): s for s in exporter.get_finished_spans()}  # type: ignore[union-attr]
    publish_placed = spans[("orders publish", None)]
    process_placed = spans[("payments process", 1)]
    publish_charged = spans[("payments publish", None)]
    process_charged = spans[("ledger process", 1)]
    assert {s.context.trace_id for s in spans.values()} == {publish_placed.context.trace_id}
    assert publish_placed.kind is SpanKind.PRODUCER
    assert process_placed.kind is SpanKind.CONSUMER
    assert process_placed.parent.span_id == publish_placed.context.span_id  # type: ignore[union-attr]
    assert publish_charged.parent.span_id == process_placed.context.span_id  # type: ignore[union-attr]
    assert process_charged.parent.span_id == publish_charged.context.span_id  # type: ignore[union-attr]
    assert process_charged.status.status_code is StatusCode.ERROR
    assert process_placed.attributes["eventbus.handler"].endswith("charge")  # type: ignore[index,union-attr]


def test_prometheus_counts(registry: Registry, types_: tuple[type, type]) -> None:
    placed, _ = types_
    metrics = CollectorRegistry()

    @registry.subscribe(placed, retries=1, backoff=0.01)
    def charge(event: Any) -> None:
        if event.order_id == "bad":
            raise RuntimeError("declined")

    bus = Bus("payments", "memory://", registry=registry, middleware=[PrometheusMiddleware(metrics)])
    with bus.testing(raise_errors=False) as t:
        bus.publish(placed("ok"))
        bus.publish(placed("bad"))
        t.deliver("payments", b"???", {"manifest": "OrderPlaced"})

    def value(name: str, **labels: str) -> float:
        found = metrics.get_sample_value(name, labels)
        return 0.0 if found is None else found

    handler = f"{charge.__module__}.{charge.__qualname__}"
    assert value("eventbus_published_total", topic="orders", manifest="OrderPlaced") == 2
    assert value("eventbus_handled_total", queue="payments", handler=handler, manifest="OrderPlaced") == 1
    assert value("eventbus_failed_total", queue="payments", handler=handler, manifest="OrderPlaced") == 2
    assert value("eventbus_retried_total", queue="payments", manifest="OrderPlaced") == 1
    dead = {"queue": "payments", "manifest": "OrderPlaced"}
    assert value("eventbus_dead_lettered_total", **dead, reason="handler-failed") == 1
    assert value("eventbus_dead_lettered_total", **dead, reason="undecodable") == 1
    assert (
        value("eventbus_handler_duration_seconds_count", queue="payments", handler=handler, manifest="OrderPlaced") == 3
    )
    assert value("eventbus_in_flight", queue="payments", handler=handler) == 0
