"""Flow 1: publishing to RabbitMQ, persistent ~200-byte JSON messages into a durable queue.

- raw pika, unconfirmed: ``BlockingConnection.basic_publish`` without confirms (the ceiling);
- raw pika, confirmed: ``confirm_delivery()``, so each publish waits for its confirm;
- Kombu, ``confirm_publish=True``: the same one round trip per message, through ``Producer.publish``;
- FastStream, ``await broker.publish(...)`` one after another (aio-pika confirms each), and the same
  with ``asyncio.gather`` over chunks of 1,000, which keeps that many confirms in flight;
- eventbus ``publish_many`` (confirmed, pipelined) and ``publish`` from 8 threads (confirmed).

Cases that wait a round trip per message move ``slow_messages``, the others ``messages``; the table
shows msg/s, so the counts do not skew it. The queue is purged between cases.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import kombu
import pika
from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange
from pydantic import BaseModel

from .common import FILL, MANIFEST, Case, Timing, raw_properties, stopwatch, timed
from .rabbit import Rig

FLOW = "publish"
TITLE = "RabbitMQ publish, persistent ~200 B JSON"
CHUNK = 1000
RAW_UNCONFIRMED = "raw pika, unconfirmed (ceiling)"
EVENTBUS_MANY = "eventbus publish_many (confirmed)"


class SampleModel(BaseModel):
    n: int
    fill: str


def cases(rig: Rig) -> list[Case]:
    n, slow = rig.settings.messages, rig.settings.slow_messages
    queue, url = rig.queue, rig.url

    def purged(run: Callable[[], Timing]) -> Callable[[], Timing]:
        def wrapped() -> Timing:
            rig.admin.purge(queue)
            return run()

        return wrapped

    def raw(count: int, confirm: bool) -> Callable[[], Timing]:
        def run() -> Timing:
            connection = pika.BlockingConnection(pika.URLParameters(url))
            channel = connection.channel()
            if confirm:
                channel.confirm_delivery()
            properties, body = raw_properties(), rig.body

            def publish() -> None:
                for _ in range(count):
                    channel.basic_publish(rig.topic, MANIFEST, body, properties)
                connection.close()  # returns once everything is written

            return timed(publish)

        return run

    def kombu_confirmed() -> Timing:
        with kombu.Connection(url, transport_options={"confirm_publish": True}) as connection:
            producer = connection.Producer()
            payloads = [{"n": i, "fill": FILL} for i in range(slow)]
            producer.publish({"n": -1, "fill": FILL}, exchange=rig.topic, routing_key=MANIFEST)  # connect

            def publish() -> None:
                for payload in payloads:
                    producer.publish(
                        payload, exchange=rig.topic, routing_key=MANIFEST, serializer="json", delivery_mode=2
                    )

            return timed(publish)

    def faststream(count: int, gather: bool) -> Callable[[], Timing]:
        async def main() -> Timing:
            broker = RabbitBroker(url, logger=None)
            exchange = RabbitExchange(rig.topic, type=ExchangeType.TOPIC, declare=False)
            models = [SampleModel(n=i, fill=FILL) for i in range(count)]
            await broker.start()
            try:
                await broker.publish(SampleModel(n=-1, fill=FILL), exchange=exchange, routing_key=MANIFEST)
                stop = stopwatch()
                if gather:
                    for first in range(0, count, CHUNK):
                        await asyncio.gather(
                            *(
                                broker.publish(m, exchange=exchange, routing_key=MANIFEST, persist=True)
                                for m in models[first : first + CHUNK]
                            )
                        )
                else:
                    for m in models:
                        await broker.publish(m, exchange=exchange, routing_key=MANIFEST, persist=True)
                return stop()
            finally:
                await broker.stop()

        return lambda: asyncio.run(main())

    def eventbus_many() -> Timing:
        messages = rig.messages(n)
        return timed(lambda: rig.publisher.publish_many(messages))

    def eventbus_threads(count: int) -> Callable[[], Timing]:
        def run() -> Timing:
            messages = rig.messages(n)
            parts = [messages[i::count] for i in range(count)]
            workers = [
                threading.Thread(target=lambda part=part: [rig.publisher.publish(m) for m in part]) for part in parts
            ]

            def publish() -> None:
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()

            return timed(publish)

        return run

    logging.getLogger("faststream").setLevel(logging.WARNING)
    return [
        Case(FLOW, RAW_UNCONFIRMED, n, purged(raw(n, confirm=False)), reference=True),
        Case(FLOW, "raw pika, confirmed (blocking)", slow, purged(raw(slow, confirm=True))),
        Case(FLOW, "Kombu, confirm_publish=True", slow, purged(kombu_confirmed)),
        Case(FLOW, "FastStream publish, one await at a time", slow, purged(faststream(slow, gather=False))),
        Case(FLOW, f"FastStream publish, gather {CHUNK:,} at a time", n, purged(faststream(n, gather=True))),
        Case(FLOW, EVENTBUS_MANY, n, purged(eventbus_many)),
        Case(FLOW, "eventbus publish from 8 threads (confirmed)", n, purged(eventbus_threads(8))),
    ]
