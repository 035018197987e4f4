"""Flow 4: in memory, publish -> handler with a JSON round trip, 5-field message.

FastStream's ``TestRabbitBroker`` (what its users test with: publishing calls the subscriber in
process, the message encoded to JSON and validated into a pydantic model) against eventbus's
``bus.testing()`` (synchronous, in memory, JSON via cattrs) and ``bus.start()`` on ``memory://``
(background worker threads).
"""

from __future__ import annotations

import asyncio

from attrs import frozen
from faststream.rabbit import RabbitBroker, TestRabbitBroker
from pydantic import BaseModel

from eventbus import Bus, Registry

from .common import Case, Countdown, Settings, Timing, stopwatch, timed

FLOW = "memory"
FASTSTREAM = "FastStream TestRabbitBroker"
TESTING = "eventbus bus.testing()"
TITLE = "In memory: publish -> handler, 5-field message, JSON round trip"


class OrderModel(BaseModel):
    order_id: str
    customer: str
    amount_cents: int
    currency: str
    express: bool


def cases(settings: Settings) -> list[Case]:
    n, slow = settings.messages, settings.slow_messages
    counted = Countdown()
    registry = Registry()

    @registry.message(topic=f"bench-memory-{settings.uid}")
    @frozen
    class OrderPlaced:
        order_id: str
        customer: str
        amount_cents: int
        currency: str
        express: bool

    @registry.subscribe(OrderPlaced)
    def handle(event: OrderPlaced) -> None:
        counted.hit()

    def orders(count: int) -> list[OrderPlaced]:
        return [OrderPlaced(f"o-{i}", "ada", i, "EUR", i % 2 == 0) for i in range(count)]

    def faststream() -> Timing:
        broker = RabbitBroker(logger=None)
        queue = f"bench-memory-{settings.uid}"

        @broker.subscriber(queue)
        async def handle(order: OrderModel) -> None:
            counted.hit()

        models = [
            OrderModel(order_id=f"o-{i}", customer="ada", amount_cents=i, currency="EUR", express=i % 2 == 0)
            for i in range(slow)
        ]

        async def main() -> Timing:
            async with TestRabbitBroker(broker) as test:
                await test.publish(models[0], queue)  # warm up
                counted.reset(slow)
                stop = stopwatch()
                for model in models:
                    await test.publish(model, queue)
                elapsed = stop()
            counted.wait(0)
            return elapsed

        return asyncio.run(main())

    def testing() -> Timing:
        bus = Bus("bench", f"memory://bench-testing-{settings.uid}", registry=registry)
        messages = orders(n)
        with bus.testing() as session:
            bus.publish(messages[0])  # warm up
            counted.reset(n)

            def publish() -> None:
                for m in messages:
                    bus.publish(m)

            elapsed = timed(publish)
            session.clear()
        counted.wait(0)
        return elapsed

    def background(concurrency: int) -> Timing:
        bus = Bus("bench", f"memory://bench-bg-{settings.uid}", registry=registry, concurrency=concurrency)
        messages = orders(n)
        counted.reset(n)
        bus.start()
        try:

            def publish() -> None:
                for m in messages:
                    bus.publish(m)
                counted.wait()

            return timed(publish)
        finally:
            bus.stop()

    return [
        Case(FLOW, FASTSTREAM, slow, faststream, reference=True),
        Case(FLOW, TESTING, n, testing),
        Case(FLOW, "eventbus bus.start() on memory://, 1 thread", n, lambda: background(1)),
        Case(FLOW, "eventbus bus.start() on memory://, 4 threads", n, lambda: background(4)),
    ]
