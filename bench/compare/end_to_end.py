"""Flows 2, 5 and 6: RabbitMQ end to end, publish -> decode into a typed message -> handler -> ack.

Each tool's consumer runs before the clock starts; the clock stops when its handler has run for
every message. Each tool publishes its own way, with the guarantee it offers its users:

- raw pika: unconfirmed ``basic_publish``; one consumer thread (``BlockingConnection``, prefetch
  256) decodes with ``json.loads`` into a dataclass and acks each message;
- Kombu: ``Producer.publish`` with ``confirm_publish=True`` (a round trip per message), and again
  unconfirmed (Kombu's default), to show what the consumer alone does; ``Consumer`` with prefetch 256
  and ``accept=["json"]``, ``drain_events`` on one thread, the handler builds the dataclass and acks;
- FastStream: ``broker.publish`` gathered 1,000 at a time (confirmed), an ``async`` subscriber taking
  a pydantic model (prefetch 256), acked after the handler returns (FastStream's default);
- Dramatiq: ``actor.send`` (its default: unconfirmed), a ``Worker`` with 4 threads and prefetch 256 on
  a queue of its own; the actor builds the dataclass;
- eventbus: ``publish_many`` (confirmed) to a ``Bus`` with 4 handler threads and prefetch 256.

Flow 5 runs eventbus again with ``RedisDedupCache`` (a claim and a done mark in Redis per message).
Flow 6 runs eventbus with a handler that sleeps 5 ms, on 1, 2, 4 and 8 handler threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable

import dramatiq
import kombu
import pika
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import dq_name, xq_name
from faststream.rabbit import Channel, ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue
from pydantic import BaseModel

from eventbus import Bus

from .common import FILL, MANIFEST, Case, Sample, Timing, raw_properties, stopwatch
from .rabbit import Rig

FLOW = "end to end"
TITLE = "RabbitMQ end to end: publish, decode into a typed message, handle, ack"
DEDUP_FLOW = "dedup"
DEDUP_TITLE = "RabbitMQ end to end, de-duplication cost"
SCALING_FLOW = "scaling"
SCALING_TITLE = "RabbitMQ end to end, handler sleeping 5 ms (I/O-bound), by handler threads"
PREFETCH = 256
THREADS = 4
CHUNK = 1000
SLEEP = 0.005
RAW = "raw pika (unconfirmed publish, 1 consumer thread)"
KOMBU_CONFIRMED = "Kombu (confirm_publish=True)"
KOMBU = "Kombu (unconfirmed publish)"
FASTSTREAM = "FastStream (confirmed, gather 1,000; pydantic)"
EVENTBUS = "eventbus (publish_many confirmed, 4 threads)"


class SampleModel(BaseModel):
    n: int
    fill: str


def cases(rig: Rig) -> list[Case]:
    n, slow = rig.settings.messages, rig.settings.slow_messages
    url, queue, counted = rig.url, rig.queue, rig.countdown

    def purged(run: Callable[[], Timing]) -> Callable[[], Timing]:
        def wrapped() -> Timing:
            rig.admin.purge(queue)
            return run()

        return wrapped

    def raw_pika() -> Timing:
        counted.reset(n)
        finished = threading.Event()
        ready = threading.Event()

        def consume() -> None:
            connection = pika.BlockingConnection(pika.URLParameters(url))
            channel = connection.channel()
            channel.basic_qos(prefetch_count=PREFETCH)

            def on_message(ch: object, method: pika.spec.Basic.Deliver, props: object, body: bytes) -> None:
                Sample(**json.loads(body))
                counted.hit()
                channel.basic_ack(method.delivery_tag)

            channel.basic_consume(queue, on_message)
            ready.set()
            while not finished.is_set():
                connection.process_data_events(time_limit=0.05)
            connection.close()

        consumer = threading.Thread(target=consume)
        consumer.start()
        ready.wait(30)
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        properties, body = raw_properties(), rig.body
        stop = stopwatch()
        for _ in range(n):
            channel.basic_publish(rig.topic, MANIFEST, body, properties)
        counted.wait()
        elapsed = stop()
        finished.set()
        consumer.join()
        connection.close()
        return elapsed

    def kombu_flow(count: int, confirm: bool) -> Callable[[], Timing]:
        def run() -> Timing:
            counted.reset(count)
            finished = threading.Event()
            ready = threading.Event()

            def on_message(body: dict[str, object], message: kombu.Message) -> None:
                Sample(**body)  # type: ignore[arg-type]
                counted.hit()
                message.ack()

            def consume() -> None:
                with (
                    kombu.Connection(url) as connection,
                    connection.Consumer(
                        kombu.Queue(queue, no_declare=True),
                        callbacks=[on_message],
                        accept=["json"],
                        prefetch_count=PREFETCH,
                    ),
                ):
                    ready.set()
                    while not finished.is_set():
                        with contextlib.suppress(TimeoutError):
                            connection.drain_events(timeout=0.05)

            consumer = threading.Thread(target=consume)
            consumer.start()
            ready.wait(30)
            options = {"confirm_publish": True} if confirm else {}
            with kombu.Connection(url, transport_options=options) as connection:
                producer = connection.Producer()
                payloads = [{"n": i, "fill": FILL} for i in range(count)]
                connection.ensure_connection()
                stop = stopwatch()
                for payload in payloads:
                    producer.publish(
                        payload, exchange=rig.topic, routing_key=MANIFEST, serializer="json", delivery_mode=2
                    )
                counted.wait()
                elapsed = stop()
            finished.set()
            consumer.join()
            return elapsed

        return run

    def faststream() -> Timing:
        counted.reset(n)

        async def main() -> Timing:
            broker = RabbitBroker(url, logger=None)

            @broker.subscriber(RabbitQueue(queue, declare=False), channel=Channel(prefetch_count=PREFETCH))
            async def handle(sample: SampleModel) -> None:
                counted.hit()

            exchange = RabbitExchange(rig.topic, type=ExchangeType.TOPIC, declare=False)
            models = [SampleModel(n=i, fill=FILL) for i in range(n)]
            await broker.start()
            try:
                stop = stopwatch()
                for first in range(0, n, CHUNK):
                    await asyncio.gather(
                        *(
                            broker.publish(m, exchange=exchange, routing_key=MANIFEST, persist=True)
                            for m in models[first : first + CHUNK]
                        )
                    )
                while not counted.done:
                    await asyncio.sleep(0.002)
                return stop()
            finally:
                await broker.stop()

        return asyncio.run(main())

    def dramatiq_flow() -> Timing:
        counted.reset(n)
        name = f"{queue}-dramatiq"
        broker = RabbitmqBroker(url=url)

        def handle(n: int, fill: str) -> None:
            Sample(n, fill)
            counted.hit()

        actor = dramatiq.actor(handle, broker=broker, queue_name=name, max_retries=0, actor_name=f"handle_{name}")
        worker = dramatiq.Worker(broker, worker_threads=THREADS)
        worker.queue_prefetch = PREFETCH
        worker.start()
        try:
            stop = stopwatch()
            for i in range(n):
                actor.send(i, FILL)
            counted.wait()
            elapsed = stop()
        finally:
            worker.stop()
            for q in (name, dq_name(name), xq_name(name)):
                rig.admin.channel.queue_delete(q)
            broker.close()
        return elapsed

    def eventbus(
        count: int, *, concurrency: int = THREADS, dedup: bool = False, sleep: float = 0.0
    ) -> Callable[[], Timing]:
        def run() -> Timing:
            counted.reset(count)
            rig.handler_sleep = sleep
            messages = rig.messages(count)
            consumer: Bus = rig.consumer(concurrency=concurrency, prefetch=PREFETCH, dedup=dedup)
            consumer.start()
            try:
                stop = stopwatch()
                rig.publisher.publish_many(messages)
                counted.wait()
                return stop()
            finally:
                consumer.stop()
                rig.handler_sleep = 0.0

        return run

    logging.getLogger("dramatiq").setLevel(logging.WARNING)
    logging.getLogger("faststream").setLevel(logging.WARNING)
    scaled = rig.settings.scaling_messages
    return [
        Case(FLOW, RAW, n, purged(raw_pika), reference=True),
        Case(FLOW, KOMBU_CONFIRMED, slow, purged(kombu_flow(slow, confirm=True))),
        Case(FLOW, KOMBU, n, purged(kombu_flow(n, confirm=False))),
        Case(FLOW, FASTSTREAM, n, purged(faststream)),
        Case(FLOW, "Dramatiq (unconfirmed send, 4 threads)", n, dramatiq_flow),
        Case(FLOW, EVENTBUS, n, purged(eventbus(n))),
        Case(DEDUP_FLOW, "eventbus, no de-duplication", n, purged(eventbus(n)), reference=True),
        Case(DEDUP_FLOW, "eventbus + RedisDedupCache", n, purged(eventbus(n, dedup=True))),
        *(
            Case(
                SCALING_FLOW,
                f"eventbus, {threads} handler thread{'s' if threads > 1 else ''}",
                scaled,
                purged(eventbus(scaled, concurrency=threads, sleep=SLEEP)),
                reference=threads == 1,
            )
            for threads in (1, 2, 4, 8)
        ),
    ]
