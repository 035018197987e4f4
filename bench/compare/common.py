"""What the flows share: the cases, the payload, counting handled messages, the RabbitMQ admin channel."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pika

AMQP_URL = os.environ.get("EVENTBUS_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("EVENTBUS_REDIS_URL", "redis://127.0.0.1:6379/0")
#: With the JSON around it (``{"n": 12345, "fill": "..."}``), a body of about 200 bytes.
FILL = "x" * 175
MANIFEST = "Sample"


@dataclass(frozen=True)
class Sample:
    """The typed message peers decode into (eventbus declares its own attrs twin)."""

    n: int
    fill: str


@dataclass(frozen=True)
class Settings:
    """What the command line chose."""

    messages: int  # per case, for cases that pipeline
    slow_messages: int  # per case, for cases that wait a round trip per message
    sqs_messages: int
    scaling_messages: int
    amqp_url: str = AMQP_URL
    redis_url: str = REDIS_URL
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


@dataclass(frozen=True)
class Timing:
    """How long moving the messages took: wall clock, and CPU time of this process (all its threads)."""

    wall: float
    cpu: float | None


@dataclass(frozen=True)
class Case:
    """One way of running a flow: ``run()`` moves ``messages`` messages and returns how long that took."""

    flow: str
    name: str
    messages: int
    run: Callable[[], Timing]
    #: Ratios in this flow are taken against the reference case of the same round.
    reference: bool = False


class Countdown:
    """Counts handled messages from any thread; ``wait()`` returns once ``target`` were counted."""

    def __init__(self, target: int = 0) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.count = 0
        self.target = target

    def reset(self, target: int) -> None:
        with self._lock:
            self.count, self.target = 0, target
            self._done.clear()

    def hit(self) -> None:
        with self._lock:
            self.count += 1
            if self.count == self.target:
                self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float = 600.0) -> None:
        if not self._done.wait(timeout):
            raise SystemExit(f"only {self.count} of {self.target} messages were handled within {timeout:.0f}s")


def stopwatch() -> Callable[[], Timing]:
    """Start timing now; call the result to stop: ``stop = stopwatch(); ...; return stop()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    return lambda: Timing(time.perf_counter() - wall, time.process_time() - cpu)


def timed(run: Callable[[], object]) -> Timing:
    """How long ``run`` took."""
    stop = stopwatch()
    run()
    return stop()


class Admin:
    """A blocking connection for purging and deleting the bench's queues and exchanges."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self._connection.channel()

    def purge(self, queue: str, settle: float = 1.5) -> None:
        """Empty ``queue``, then let the broker finish writing (the last case's messages) before the next."""
        self.channel.queue_purge(queue)
        time.sleep(settle)

    def delete(self, queues: list[str], exchanges: list[str]) -> None:
        for queue in queues:
            self.channel.queue_delete(queue)
        for exchange in exchanges:
            self.channel.exchange_delete(exchange)

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()


@contextmanager
def admin(url: str) -> Iterator[Admin]:
    """An :class:`Admin`, closed on exit."""
    handle = Admin(url)
    try:
        yield handle
    finally:
        handle.close()


def raw_properties() -> pika.BasicProperties:
    """What raw pika sends: persistent JSON with the manifest as the AMQP type."""
    return pika.BasicProperties(delivery_mode=2, content_type="application/json", type=MANIFEST)
