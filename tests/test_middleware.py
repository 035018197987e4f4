from __future__ import annotations

import logging
from typing import Any

import attrs
import pytest

from eventbus import Bus, Context, Envelope, Middleware, PublishError, Registry


@pytest.fixture
def placed(registry: Registry) -> type:
    @registry.message(topic="orders")
    @attrs.frozen
    class OrderPlaced:
        order_id: str

    return OrderPlaced


class Recorder(Middleware):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def before_publish(self, message: Any, envelope: Envelope) -> None:
        self.calls.append(f"{self.name}.before_publish")
        envelope.headers[f"seen-by-{self.name}"] = "yes"

    def after_publish(self, message: Any, envelope: Envelope) -> None:
        self.calls.append(f"{self.name}.after_publish")

    def publish_failed(self, message: Any, envelope: Envelope, error: BaseException) -> None:
        self.calls.append(f"{self.name}.publish_failed {type(error).__name__}")

    def before_handle(self, ctx: Context, message: Any) -> None:
        self.calls.append(f"{self.name}.before_handle")

    def after_handle(self, ctx: Context, message: Any, duration: float) -> None:
        assert duration >= 0
        self.calls.append(f"{self.name}.after_handle")

    def handle_failed(self, ctx: Context, message: Any, error: BaseException, duration: float) -> None:
        self.calls.append(f"{self.name}.handle_failed {error}")

    def settled(self, queue: str, envelope: Envelope, action: str, reason: str | None) -> None:
        self.calls.append(f"{self.name}.settled {action} {reason}")


def test_hooks_wrap_publish_and_handle_in_onion_order(registry: Registry, placed: type) -> None:
    calls: list[str] = []
    headers: list[dict[str, str]] = []

    @registry.subscribe(placed)
    def handle(event: Any, ctx: Context) -> None:
        calls.append("handler")
        headers.append(dict(ctx.headers))

    bus = Bus("svc", "memory://", registry=registry, middleware=[Recorder("outer", calls)])
    bus.add_middleware(Recorder("inner", calls))
    with bus.testing():
        bus.publish(placed("o-1"))
    assert calls == [
        "outer.before_publish",
        "inner.before_publish",
        "outer.before_handle",
        "inner.before_handle",
        "handler",
        "inner.after_handle",
        "outer.after_handle",
        "inner.settled ack None",
        "outer.settled ack None",
        "inner.after_publish",
        "outer.after_publish",
    ]
    assert headers == [{"seen-by-outer": "yes", "seen-by-inner": "yes"}]  # e.g. trace context


def test_failures_retries_and_dead_letters_reach_the_hooks(registry: Registry, placed: type) -> None:
    calls: list[str] = []

    @registry.subscribe(placed, retries=1, backoff=0.01)
    def broken(event: Any) -> None:
        raise ValueError("nope")

    bus = Bus("svc", "memory://", registry=registry, middleware=[Recorder("m", calls)])
    with bus.testing(raise_errors=False) as t:
        bus.publish(placed("o-1"))
        t.deliver("svc", b"garbage", {"manifest": "OrderPlaced"})
    handling = [c for c in calls if "handle" in c or "settled" in c]
    assert handling == [
        "m.before_handle",
        "m.handle_failed nope",
        "m.settled retry None",
        "m.before_handle",
        "m.handle_failed nope",
        "m.settled dead_letter handler-failed",
        "m.settled dead_letter undecodable",
    ]


def test_publish_failed_then_the_error_propagates(registry: Registry, placed: type) -> None:
    calls: list[str] = []
    bus = Bus("svc", "memory://", registry=registry, middleware=[Recorder("m", calls)])
    with pytest.raises(PublishError):
        bus.send("nowhere", placed("o-1"))
    assert calls == ["m.before_publish", "m.publish_failed PublishError"]


def test_a_raising_before_hook_fails_the_operation_and_others_are_only_logged(
    registry: Registry, placed: type, caplog: pytest.LogCaptureFixture
) -> None:
    class Veto(Middleware):
        def before_publish(self, message: Any, envelope: Envelope) -> None:
            if message.order_id == "forbidden":
                raise PermissionError("not this one")

        def before_handle(self, ctx: Context, message: Any) -> None:
            if message.order_id == "refused":
                raise PermissionError("handler refused")

        def after_handle(self, ctx: Context, message: Any, duration: float) -> None:
            raise RuntimeError("metrics backend down")

    ran: list[str] = []

    @registry.subscribe(placed, on_failure="dead_letter")
    def handle(event: Any) -> None:
        ran.append(event.order_id)

    bus = Bus("svc", "memory://", registry=registry, middleware=[Veto()])
    with bus.testing(raise_errors=False) as t:
        with pytest.raises(PermissionError, match="not this one"):
            bus.publish(placed("forbidden"))
        bus.publish(placed("refused"))
        bus.publish(placed("fine"))
    assert ran == ["fine"]
    assert [d.headers["error-message"] for d in t.dead_letters] == ["handler refused"]
    assert "middleware hook" in caplog.text
    assert "metrics backend down" in caplog.text


def test_debug_logs_carry_structured_fields(registry: Registry, placed: type, caplog: pytest.LogCaptureFixture) -> None:
    registry.subscribe(placed)(lambda event: None)
    bus = Bus("svc", "memory://", registry=registry)
    with caplog.at_level(logging.DEBUG, logger="eventbus"), bus.testing():
        message_id = bus.publish(placed("o-1"))
    handled = next(r for r in caplog.records if "handled" in r.getMessage())
    assert handled.message_id == message_id  # type: ignore[attr-defined]
    assert handled.manifest == "OrderPlaced"  # type: ignore[attr-defined]
    assert handled.correlation_id == message_id  # type: ignore[attr-defined]
    assert handled.attempt == 1  # type: ignore[attr-defined]
    assert handled.handler.endswith("<lambda>")  # type: ignore[attr-defined]
    assert handled.duration_ms >= 0  # type: ignore[attr-defined]
    published = next(r for r in caplog.records if r.getMessage().startswith("published"))
    assert published.message_id == message_id  # type: ignore[attr-defined]
