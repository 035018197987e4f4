"""The delivery promises of DESIGN.md, on the memory backend with real worker threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from typing import Any

import attrs
import pytest

from eventbus import Backoff, Bus, Context, MemoryDedupCache, Registry, wait_until
from eventbus.backends.memory import MemoryBackend, MemoryBroker
from eventbus.envelope import Envelope


@pytest.fixture
def order_type(registry: Registry) -> type:
    @registry.message(topic="orders")
    @attrs.frozen
    class OrderPlaced:
        order_id: str

    return OrderPlaced


def broker_of(bus: Bus) -> MemoryBroker:
    backend = bus.backend
    assert isinstance(backend, MemoryBackend)
    return backend.broker


@pytest.fixture
def started() -> Any:
    buses: list[Bus] = []

    def start(bus: Bus) -> Bus:
        buses.append(bus)
        return bus.start()

    yield start
    for bus in buses:
        bus.stop(timeout=5)


def test_ack_only_after_every_handler_succeeded(
    registry: Registry, order_type: type, memory_url: str, started: Any
) -> None:
    release = threading.Event()
    first_done = threading.Event()

    @registry.subscribe(order_type)
    def quick(event: Any) -> None:
        first_done.set()

    @registry.subscribe(order_type)
    def slow(event: Any) -> None:
        release.wait(5)

    bus = started(Bus("svc", memory_url, registry=registry))
    bus.publish(order_type("o-1"))
    assert first_done.wait(5)
    broker = broker_of(bus)
    assert broker.depth("svc") == 1  # one handler done, the other running: still not acked
    release.set()
    wait_until(lambda: broker.depth("svc") == 0, message="the message to be acked")


def test_failing_sibling_reruns_both_without_dedup_and_only_itself_with_dedup(
    registry: Registry, order_type: type, memory_url: str, started: Any
) -> None:
    runs: Counter[str] = Counter()

    @registry.subscribe(order_type)
    def steady(event: Any) -> None:
        runs["steady"] += 1

    @registry.subscribe(order_type, retries=3, backoff=Backoff(initial=0.01, jitter=0))
    def flaky(event: Any, ctx: Context) -> None:
        runs["flaky"] += 1
        if ctx.attempt < 3:
            raise ConnectionError("try again")

    plain = started(Bus("plain", memory_url, registry=registry))
    plain.publish(order_type("o-1"))
    wait_until(lambda: runs["flaky"] == 3 and broker_of(plain).depth("plain") == 0)
    assert runs == {"steady": 3, "flaky": 3}
    plain.stop()

    runs.clear()
    deduped = started(Bus("deduped", memory_url, registry=registry, dedup=MemoryDedupCache()))
    deduped.publish(order_type("o-2"))
    wait_until(lambda: runs["flaky"] == 3 and broker_of(deduped).depth("deduped") == 0)
    assert runs == {"steady": 1, "flaky": 3}


def test_retry_waits_for_the_backoff_then_dead_letters(
    registry: Registry, order_type: type, memory_url: str, started: Any
) -> None:
    seen: list[tuple[int, float]] = []

    @registry.subscribe(order_type, retries=2, backoff=Backoff(initial=0.2, factor=2, jitter=0.1))
    def failing(event: Any, ctx: Context) -> None:
        seen.append((ctx.attempt, time.monotonic()))
        raise RuntimeError("payment gateway down")

    bus = started(Bus("svc", memory_url, registry=registry, concurrency=1))
    bus.publish(order_type("o-1"))
    dead = wait_until(lambda: bus.dead_letters(), message="a dead letter")
    assert [attempt for attempt, _ in seen] == [1, 2, 3]
    first_gap, second_gap = seen[1][1] - seen[0][1], seen[2][1] - seen[1][1]
    assert 0.18 <= first_gap <= 0.22 + 0.5
    assert 0.36 <= second_gap <= 0.44 + 0.5
    wire = dead[0].to_wire()
    assert wire["error-reason"] == "handler-failed"
    assert wire["error-message"] == "payment gateway down"
    assert wire["error-attempt"] == "3"
    assert wire["error-queue"] == "svc"
    assert wire["error-service"] == "svc"
    assert broker_of(bus).depth("svc") == 0


POISON = [
    pytest.param(b"\x00\xfe\xff garbage", {"manifest": "OrderPlaced"}, "undecodable", id="random-bytes"),
    pytest.param(b'{"order_id": "o"}', {"manifest": "Nope"}, "unknown-manifest", id="unknown-manifest"),
    pytest.param(b'{"order_id": "o"}', {}, "unknown-manifest", id="no-manifest"),
    pytest.param(b'{"wrong": 1}', {"manifest": "OrderPlaced"}, "undecodable", id="wrong-schema"),
    pytest.param(b'{"order_id": 5}', {"manifest": "OrderPlaced", "attempt": "x"}, "undecodable", id="wrong-type"),
    pytest.param(b"<o/>", {"manifest": "OrderPlaced", "content-type": "text/xml"}, "unknown-content-type", id="xml"),
    pytest.param(b"{}", {"manifest": "OrderPlaced", "serializer": "yaml"}, "unknown-serializer", id="serializer"),
]


@pytest.mark.parametrize(("body", "wire", "reason"), POISON)
def test_poison_goes_to_the_dead_letter_queue_at_once_and_the_worker_lives(
    registry: Registry, order_type: type, memory_url: str, started: Any, body: bytes, wire: dict[str, str], reason: str
) -> None:
    handled: list[Any] = []
    registry.subscribe(order_type, retries=5)(handled.append)
    bus = started(Bus("svc", memory_url, registry=registry, concurrency=1))
    broker_of(bus).put("svc", Envelope.from_wire(body, wire))
    (dead,) = wait_until(lambda: bus.dead_letters(), message="the poison message in the DLQ")
    assert dead.headers["error-reason"] == reason
    assert dead.attempt == 1  # never retried
    bus.publish(order_type("still-alive"))
    wait_until(lambda: handled == [order_type("still-alive")], message="the next message handled")


def test_stop_loses_nothing_and_restart_handles_the_rest(registry: Registry, order_type: type, memory_url: str) -> None:
    handled: Counter[str] = Counter()
    lock = threading.Lock()

    @registry.subscribe(order_type)
    def slow(event: Any) -> None:
        time.sleep(0.002)
        with lock:
            handled[event.order_id] += 1

    total = 300
    first = Bus("svc", memory_url, registry=registry, concurrency=4)
    first.provision()
    for i in range(total):
        first.publish(order_type(str(i)))
    first.start()
    wait_until(lambda: sum(handled.values()) >= 50)
    first.stop(timeout=5)
    broker = broker_of(first)
    stopped_at = sum(handled.values())
    assert stopped_at + broker.depth("svc") == total  # nothing lost, nothing in flight
    assert stopped_at < total

    second = Bus("svc", memory_url, registry=registry, concurrency=4).start()
    try:
        wait_until(lambda: sum(handled.values()) == total, timeout=20)
    finally:
        second.stop()
    assert set(handled.values()) == {1}  # each exactly once


def test_concurrent_duplicates_run_the_handler_once_with_dedup(
    registry: Registry, order_type: type, memory_url: str, started: Any
) -> None:
    """Two copies of one message on two workers: one runs, the other waits (busy) then skips."""
    runs: list[str] = []

    @registry.subscribe(order_type, backoff=Backoff(initial=0.05, jitter=0))
    def slow(event: Any) -> None:
        runs.append(event.order_id)
        time.sleep(0.2)

    bus = Bus("svc", memory_url, registry=registry, concurrency=2, dedup=MemoryDedupCache())
    bus.provision()
    _, envelope = bus._marshaller.encode(order_type("o-1"))
    broker_of(bus).put("svc", envelope)
    broker_of(bus).put("svc", envelope)  # the broker redelivered it
    started(bus)
    wait_until(lambda: broker_of(bus).depth("svc") == 0, message="both copies settled")
    assert runs == ["o-1"]


def test_async_handlers_in_background_mode(registry: Registry, order_type: type, memory_url: str, started: Any) -> None:
    import asyncio

    loops: set[int] = set()
    done: list[str] = []

    @registry.subscribe(order_type)
    async def handle(event: Any) -> None:
        loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0.01)
        done.append(event.order_id)

    bus = started(Bus("svc", memory_url, registry=registry, concurrency=4))
    for i in range(20):
        bus.publish(order_type(str(i)))
    wait_until(lambda: len(done) == 20)
    assert len(loops) == 1  # one shared loop


def test_run_stops_cleanly_on_sigterm(tmp_path: Any) -> None:
    script = tmp_path / "service.py"
    script.write_text(
        textwrap.dedent(
            """
            import attrs, sys
            from eventbus import Bus, Registry
            registry = Registry()

            @registry.message(topic="ticks")
            @attrs.frozen
            class Tick:
                n: int

            @registry.subscribe(Tick)
            def on_tick(event):
                print("tick", event.n, flush=True)

            bus = Bus("ticker", "memory://", registry=registry)
            bus.publish(Tick(1))  # queued before start: nothing subscribed yet, dropped
            bus.provision()
            bus.publish(Tick(2))
            print("ready", flush=True)
            bus.run()
            print("stopped", flush=True)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    assert proc.stdout.readline().strip() == "tick 2"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert out.strip().endswith("stopped")
