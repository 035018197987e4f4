"""The in-memory backend: a real broker inside the process.

Topics fan out to queues through subscriptions filtered by manifest, queues
hold messages until a consumer settles them, retries wait out their delay
without blocking a worker, and dead letters land in a queue of their own.
Every ``Bus`` in the process with the same ``memory://NAME`` URL shares one
broker, so several services can run side by side in one process.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Collection, Sequence
from urllib.parse import urlsplit

from eventbus import inspection
from eventbus.backends.base import Consumer, DeliveryHandler, replayed
from eventbus.envelope import Envelope
from eventbus.errors import PublishError
from eventbus.topology import Topology, dead_letter_name

log = logging.getLogger("eventbus.memory")


class _Queue:
    def __init__(self, name: str, dead_letter: str | None) -> None:
        self.name = name
        self.dead_letter = dead_letter
        self.ready: deque[Envelope] = deque()
        self.delayed: list[tuple[float, int, Envelope]] = []
        self.in_flight = 0
        self.changed = threading.Condition(threading.Lock())

    def promote_due(self, now: float) -> None:
        while self.delayed and self.delayed[0][0] <= now:
            self.ready.append(heapq.heappop(self.delayed)[2])

    def depth(self) -> int:
        return len(self.ready) + len(self.delayed) + self.in_flight


class MemoryBroker:
    """Topics, queues and subscriptions held in memory; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, _Queue] = {}
        # topic -> queue -> manifests that queue takes from that topic
        self._subscriptions: dict[str, dict[str, frozenset[str]]] = {}
        self._routes: dict[tuple[str, str], list[str]] = {}
        self._sequence = itertools.count()

    def declare(self, topology: Topology) -> None:
        """Create the queues and subscriptions of ``topology`` (idempotent)."""
        with self._lock:
            for topic in topology.topics:
                self._subscriptions.setdefault(topic, {})
            for plan in topology.queues:
                self._queue(plan.name, plan.dead_letter)
                self._queue(plan.dead_letter, None)
            for sub in topology.subscriptions:
                queues = self._subscriptions.setdefault(sub.topic, {})
                queues[sub.queue] = queues.get(sub.queue, frozenset()) | frozenset(sub.manifests)
            self._routes = {}

    def _queue(self, name: str, dead_letter: str | None) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(name, dead_letter)
        return queue

    def route(self, topic: str, manifest: str) -> list[str]:
        """The queues a message with ``manifest`` published on ``topic`` goes to."""
        queues = self._routes.get((topic, manifest))
        if queues is None:
            subscribed = self._subscriptions.get(topic, {})
            queues = self._routes[(topic, manifest)] = [q for q, ms in subscribed.items() if manifest in ms]
        return queues

    def publish(self, topic: str, envelope: Envelope) -> list[str]:
        """Copy ``envelope`` into every queue subscribed to it; return their names."""
        queues = self.route(topic, envelope.manifest)
        for name in queues:
            self.put(name, envelope)
        return queues

    def has_queue(self, name: str) -> bool:
        """Whether queue ``name`` exists."""
        return name in self._queues

    def put(self, queue: str, envelope: Envelope, delay: float = 0.0) -> None:
        """Enqueue ``envelope``, visible after ``delay`` seconds."""
        target = self._queues.get(queue)
        if target is None:
            raise PublishError(f"no queue named {queue!r}; provision the service that consumes it first")
        with target.changed:
            if delay > 0:
                heapq.heappush(target.delayed, (time.monotonic() + delay, next(self._sequence), envelope))
            else:
                target.ready.append(envelope)
            target.changed.notify()

    def get(self, queue: str, timeout: float, stopping: threading.Event | None = None) -> Envelope | None:
        """Take the next visible message of ``queue``, waiting up to ``timeout`` seconds.

        Returns ``None`` early once ``stopping`` is set (see :meth:`wake`).
        """
        target = self._queues[queue]
        deadline = time.monotonic() + timeout
        with target.changed:
            while stopping is None or not stopping.is_set():
                now = time.monotonic()
                target.promote_due(now)
                if target.ready:
                    target.in_flight += 1
                    return target.ready.popleft()
                wait = deadline - now
                if target.delayed:
                    wait = min(wait, target.delayed[0][0] - now)
                if wait <= 0 and now >= deadline:
                    return None
                target.changed.wait(max(wait, 0.0))
            return None

    def settle(self, queue: str) -> None:
        """Mark one message taken from ``queue`` as settled."""
        target = self._queues[queue]
        with target.changed:
            target.in_flight -= 1
            target.changed.notify_all()

    def wake(self, queue: str) -> None:
        """Wake every consumer waiting on ``queue`` (used when stopping)."""
        target = self._queues[queue]
        with target.changed:
            target.changed.notify_all()

    def dead_letter_queue(self, queue: str) -> str:
        """The dead-letter queue of ``queue``."""
        target = self._queues.get(queue)
        if target is not None and target.dead_letter:
            return target.dead_letter
        return dead_letter_name(queue)

    def messages(self, queue: str) -> list[Envelope]:
        """A snapshot of the messages waiting in ``queue`` (ready, then delayed)."""
        target = self._queues.get(queue)
        if target is None:
            return []
        with target.changed:
            return [*target.ready, *(entry[2] for entry in sorted(target.delayed))]

    def depth(self, queue: str) -> int:
        """Messages in ``queue``: waiting, delayed and in flight."""
        target = self._queues.get(queue)
        if target is None:
            return 0
        with target.changed:
            return target.depth()

    def remove(self, queue: str, envelope: Envelope) -> bool:
        """Take this very ``envelope`` out of ``queue`` if it is still waiting there."""
        target = self._queues.get(queue)
        if target is None:
            return False
        with target.changed:
            for i, waiting in enumerate(target.ready):
                if waiting is envelope:
                    del target.ready[i]
                    return True
            for i, (_, _, delayed) in enumerate(target.delayed):
                if delayed is envelope:
                    target.delayed.pop(i)
                    heapq.heapify(target.delayed)
                    return True
        return False

    def purge(self, queue: str) -> int:
        """Delete the messages waiting in ``queue`` (ready and delayed); return how many."""
        target = self._queues.get(queue)
        if target is None:
            return 0
        with target.changed:
            count = len(target.ready) + len(target.delayed)
            target.ready.clear()
            target.delayed.clear()
            return count

    def queues(self) -> dict[str, str | None]:
        """Every queue, with its dead-letter queue (``None`` for a dead-letter queue itself)."""
        with self._lock:
            return {name: queue.dead_letter for name, queue in self._queues.items()}

    def subscriptions(self) -> dict[str, dict[str, frozenset[str]]]:
        """Every topic, with the queues subscribed to it and the manifests each takes."""
        with self._lock:
            return {topic: dict(queues) for topic, queues in self._subscriptions.items()}


class MemoryDelivery:
    """A message taken from a memory queue."""

    __slots__ = ("_broker", "_settled", "envelope", "queue")

    def __init__(self, broker: MemoryBroker, queue: str, envelope: Envelope) -> None:
        self._broker = broker
        self._settled = False
        self.queue = queue
        self.envelope = envelope

    def _settle(self) -> None:
        if self._settled:
            raise RuntimeError(f"message {self.envelope.message_id} was already settled")
        self._settled = True
        self._broker.settle(self.queue)

    def ack(self) -> None:
        """Done: the message leaves the queue."""
        self._settle()

    def retry(self, envelope: Envelope, delay: float) -> None:
        """Put ``envelope`` back on the queue, visible after ``delay`` seconds."""
        self._broker.put(self.queue, envelope, delay)
        self._settle()

    def dead_letter(self, envelope: Envelope) -> None:
        """Move ``envelope`` to the queue's dead-letter queue."""
        self._broker.put(self._broker.dead_letter_queue(self.queue), envelope)
        self._settle()

    def release(self) -> None:
        """Return the message untouched (for a consumer that stops before handling it)."""
        self.retry(self.envelope, 0.0)


class MemoryConsumer:
    """Worker threads taking messages from one memory queue."""

    def __init__(self, broker: MemoryBroker, queue: str, handler: DeliveryHandler, concurrency: int) -> None:
        self._broker = broker
        self._queue = queue
        self._handler = handler
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"eventbus-{queue}-{i}", daemon=True) for i in range(concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while not self._stopping.is_set():
            envelope = self._broker.get(self._queue, timeout=1.0, stopping=self._stopping)
            if envelope is None:
                continue
            delivery = MemoryDelivery(self._broker, self._queue, envelope)
            try:
                self._handler(delivery)
            except Exception:
                log.exception("delivery handler crashed on %s; returning the message", envelope.message_id)
            if not delivery._settled:
                delivery.release()

    def stop(self, timeout: float) -> None:
        """Stop taking messages and wait for the in-flight ones to be settled."""
        self._stopping.set()
        self._broker.wake(self._queue)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        alive = sum(thread.is_alive() for thread in self._threads)
        if alive:
            log.warning("%d handler(s) on %s still running after %.1fs", alive, self._queue, timeout)


_brokers: dict[str, MemoryBroker] = {}
_brokers_lock = threading.Lock()


def shared_broker(name: str) -> MemoryBroker:
    """The process-wide broker called ``name`` (``memory://NAME``)."""
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _brokers[name] = MemoryBroker()
        return broker


class MemoryBackend:
    """The :class:`~eventbus.backends.base.Backend` over a :class:`MemoryBroker`."""

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self.broker = broker if broker is not None else MemoryBroker()

    @classmethod
    def from_url(cls, url: str) -> MemoryBackend:
        """``memory://`` or ``memory://NAME``: the process-wide broker of that name."""
        return cls(shared_broker(urlsplit(url).netloc))

    def provision(self, topology: Topology) -> None:
        """Declare the queues and subscriptions."""
        self.broker.declare(topology)

    def publish(self, topic: str, envelope: Envelope) -> None:
        """Fan ``envelope`` out to the subscribed queues."""
        self.broker.publish(topic, envelope)

    def publish_many(self, messages: Sequence[tuple[str, Envelope]]) -> None:
        """Publish each message in order."""
        for topic, envelope in messages:
            self.broker.publish(topic, envelope)

    def send(self, queue: str, envelope: Envelope) -> None:
        """Put ``envelope`` on ``queue``."""
        self.broker.put(queue, envelope)

    def consume(self, queue: str, handler: DeliveryHandler, *, concurrency: int, prefetch: int) -> Consumer:
        """Start ``concurrency`` worker threads on ``queue`` (prefetch is irrelevant in memory)."""
        return MemoryConsumer(self.broker, queue, handler, concurrency)

    def dead_letters(self, queue: str, limit: int) -> list[Envelope]:
        """The first ``limit`` dead letters of ``queue``."""
        return self.broker.messages(self.broker.dead_letter_queue(queue))[:limit]

    def inspect(self, topology: Topology) -> inspection.TopologyReport:
        """Compare ``topology`` with the broker's topics, queues and subscriptions."""
        queues = self.broker.queues()
        subscriptions = self.broker.subscriptions()
        found: inspection.Resources = {(inspection.TOPIC, t): {} for t in topology.topics if t in subscriptions}
        for plan in topology.queues:
            if plan.name in queues:
                found[(inspection.QUEUE, plan.name)] = {"dead_letter": queues[plan.name]}
            if plan.dead_letter in queues:
                found[(inspection.DEAD_LETTER_QUEUE, plan.dead_letter)] = {}
            for topic, subscribed in subscriptions.items():
                if plan.name in subscribed:
                    name = inspection.subscription_name(topic, plan.name)
                    found[(inspection.SUBSCRIPTION, name)] = {"manifests": tuple(sorted(subscribed[plan.name]))}
        return inspection.compare(topology, found)

    def replay_dead_letters(
        self, queue: str, *, limit: int | None = None, message_ids: Collection[str] | None = None
    ) -> list[str]:
        """Move dead letters of ``queue`` back to it: a copy goes on the queue, then the dead letter goes."""
        if not self.broker.has_queue(queue):
            raise PublishError(f"no queue named {queue!r}; provision the service that consumes it first")
        source = self.broker.dead_letter_queue(queue)
        wanted = None if message_ids is None else set(message_ids)
        moved: list[str] = []
        for envelope in self.broker.messages(source):
            if limit is not None and len(moved) >= limit:
                break
            if wanted is not None and envelope.message_id not in wanted:
                continue
            self.broker.put(queue, replayed(envelope))
            if self.broker.remove(source, envelope):
                moved.append(envelope.message_id)
        return moved

    def purge_dead_letters(self, queue: str) -> int:
        """Delete the dead letters of ``queue``."""
        return self.broker.purge(self.broker.dead_letter_queue(queue))

    def close(self) -> None:
        """Nothing to release."""
