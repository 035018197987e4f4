"""The RabbitMQ side of the bench: one topic exchange and one durable queue, provisioned by eventbus.

Every tool publishes the same ~200-byte JSON (``{"n": ..., "fill": ...}``, AMQP type ``Sample``)
to the exchange ``bench-<uid>``, which routes it to the queue ``bench-<uid>``; the consumers of raw
pika, Kombu and FastStream read that queue without declaring anything. (Dramatiq insists on its
own queues and message format; it gets a queue of its own, see :mod:`.end_to_end`.) Everything is
deleted at the end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import redis

from eventbus import Bus, RedisDedupCache, Registry

from .common import FILL, MANIFEST, Admin, Countdown, Settings


class Rig:
    """The exchange, the queue, an eventbus message type with its counting handler, and the publishing bus."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.amqp_url
        self.topic = self.queue = f"bench-{settings.uid}"
        self.bus_url = (
            f"{self.url}{'&' if '?' in self.url else '?'}connection_name=eventbus-bench-{settings.uid}&retry_delays=1"
        )
        self.countdown = Countdown()
        #: Seconds each eventbus handler call sleeps (the I/O-bound handler of the scaling flow).
        self.handler_sleep = 0.0
        self.registry = Registry()
        countdown = self.countdown

        @self.registry.message(topic=self.topic, name=MANIFEST)
        @attrs.frozen
        class Sample:
            n: int
            fill: str

        @self.registry.subscribe(Sample)
        def handle(sample: Sample) -> None:
            if self.handler_sleep:
                time.sleep(self.handler_sleep)
            countdown.hit()

        self.message_type = Sample
        self.publisher = Bus(self.queue, self.bus_url, registry=self.registry)  # never started: it only publishes
        self.publisher.provision()
        self.body: bytes = self.publisher._marshaller.encode(Sample(0, FILL))[1].body
        self.admin = Admin(self.url)
        self.dedup_prefix = f"eventbus-bench-{settings.uid}:"
        self.publisher.publish(Sample(-1, FILL))  # connect before any clock starts
        self.admin.purge(self.queue, settle=0)

    def messages(self, count: int) -> list[Any]:
        return [self.message_type(i, FILL) for i in range(count)]

    def consumer(self, *, concurrency: int = 4, prefetch: int = 256, dedup: bool = False) -> Bus:
        """A bus that consumes the queue (not started yet)."""
        cache = RedisDedupCache(self.settings.redis_url, prefix=self.dedup_prefix) if dedup else None
        return Bus(
            self.queue, self.bus_url, registry=self.registry, concurrency=concurrency, prefetch=prefetch, dedup=cache
        )

    def close(self) -> None:
        self.publisher.stop()
        self.admin.delete(
            [self.queue, f"{self.queue}-dlq", f"{self.queue}-retry-1s"],
            [self.topic],
        )
        self.admin.close()
        client: Any = redis.Redis.from_url(self.settings.redis_url)
        keys = list(client.scan_iter(match=f"{self.dedup_prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()


@contextmanager
def rig(settings: Settings) -> Iterator[Rig]:
    """A :class:`Rig`, torn down on exit."""
    made = Rig(settings)
    try:
        yield made
    finally:
        made.close()
