"""What the conformance suite needs to know about each backend.

A harness builds buses on its backend with names unique to one test, says
which optional capabilities the backend has, probes how many messages a
queue still holds, and cleans up. The suite itself only uses the public Bus
API plus ``bus.backend.send`` to inject raw messages.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import boto3
import pika
import pika.exceptions
import pytest
import redis

from eventbus import Bus, Registry
from eventbus.backends.memory import MemoryBackend
from eventbus.backends.redis import RedisBackend
from eventbus.backends.sqs import SqsBackend
from tests import moto_server
from tests.rabbitmq.rabbitmq_support import listing

#: Optional capabilities a backend may declare.
FIFO = "fifo"  # ordered delivery within a message group


@attrs.define
class Harness:
    """One backend, as the conformance suite drives it."""

    name: str
    url: Callable[[str], str]
    capabilities: frozenset[str]
    pending: Callable[[Bus, str], int]
    cleanup: Callable[[str], None] = lambda namespace: None
    #: How much later than asked a retry may come back (broker timer granularity).
    delay_slack: float = 0.5
    #: Seconds to wait for a delivery before a test fails.
    timeout: float = 10.0
    namespace: str = attrs.field(factory=lambda: "c" + uuid.uuid4().hex[:10])
    buses: list[Bus] = attrs.Factory(list)

    def name_of(self, base: str) -> str:
        """A topic or service name unique to this test."""
        return f"{self.namespace}-{base}"

    def bus(self, service: str, registry: Registry, **options: Any) -> Bus:
        """A bus for ``service`` on this backend; stopped at teardown."""
        bus = Bus(self.name_of(service), self.url(self.namespace), registry=registry, **options)
        self.buses.append(bus)
        return bus

    def require(self, capability: str) -> None:
        """Mark the test not applicable when the backend lacks ``capability``."""
        if capability not in self.capabilities:
            pytest.skip(f"not applicable: the {self.name} backend does not offer {capability!r}")

    def close(self) -> None:
        """Stop every bus and remove what the test created."""
        for bus in self.buses:
            bus.stop(timeout=10)
        self.cleanup(self.namespace)


def _memory_pending(bus: Bus, queue: str) -> int:
    backend = bus.backend
    assert isinstance(backend, MemoryBackend)
    return backend.broker.depth(queue)


def memory() -> Harness:
    """The in-process broker."""
    return Harness(
        name="memory",
        url=lambda namespace: f"memory://{namespace}",
        capabilities=frozenset(),
        pending=_memory_pending,
        delay_slack=0.3,
        timeout=5.0,
    )


REDIS_URL = os.environ.get("EVENTBUS_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_pending(bus: Bus, queue: str) -> int:
    """Entries of the queue's group not yet acknowledged: read but pending, not yet read, or delayed."""
    backend = bus.backend
    assert isinstance(backend, RedisBackend)
    client, keys = backend.redis, backend.keys
    streams = [keys.queue(queue)] + [keys.topic(route.split(" ", 1)[0]) for route in backend.known_routes(queue)]
    count = int(client.zcard(keys.delayed(queue)))
    for stream in set(streams):
        for group in client.xinfo_groups(stream):
            if group["name"].decode() == queue:
                count += int(group["pending"]) + int(group.get("lag") or 0)
    return count


def redis_cleanup(namespace: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def redis_streams() -> Harness:
    """Redis Streams on the shared server, with a key prefix of the test's own."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); start it (.ci/run does)")
    return Harness(
        name="redis",
        url=lambda namespace: f"{REDIS_URL}?prefix={namespace}:&reclaim=2&block=0.2",
        capabilities=frozenset(),
        pending=_redis_pending,
        cleanup=redis_cleanup,
        delay_slack=0.6,
    )


def _sqs_client(service: str) -> Any:
    return boto3.client(
        service,
        region_name=moto_server.REGION,
        endpoint_url=moto_server.shared().url,
        aws_access_key_id=moto_server.KEY,
        aws_secret_access_key=moto_server.SECRET,
    )


def _sqs_pending(bus: Bus, queue: str) -> int:
    """Messages in the queue: visible, in flight (not visible) and delayed."""
    backend = bus.backend
    assert isinstance(backend, SqsBackend)
    url = backend.queue_url(queue)
    assert url is not None
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    attributes = _sqs_client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(attributes.get(name, 0)) for name in names)


def sqs_cleanup(namespace: str) -> None:
    sqs, sns = _sqs_client("sqs"), _sqs_client("sns")
    for url in sqs.list_queues(QueueNamePrefix=namespace).get("QueueUrls", []):
        sqs.delete_queue(QueueUrl=url)
    for topic in sns.list_topics().get("Topics", []):
        if topic["TopicArn"].rsplit(":", 1)[-1].startswith(namespace):
            sns.delete_topic(TopicArn=topic["TopicArn"])


def sns_sqs() -> Harness:
    """SNS + SQS on the session's local moto server."""
    endpoint = moto_server.shared().url
    return Harness(
        name="sqs",
        url=lambda namespace: moto_server.sqs_url(endpoint),
        capabilities=frozenset({FIFO}),
        pending=_sqs_pending,
        cleanup=sqs_cleanup,
        delay_slack=1.5,
        timeout=20.0,
    )


RABBITMQ_URL = os.environ.get("EVENTBUS_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _rabbitmq_pending(bus: Bus, queue: str) -> int:
    """Ready and unacked messages in the queue and its retry queues (through rabbitmqctl)."""
    rows = listing("queues", "name", "messages")
    return sum(
        int(row["messages"]) for row in rows if row["name"] == queue or row["name"].startswith(f"{queue}-retry-")
    )


def rabbitmq_cleanup(namespace: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    channel = connection.channel()
    for row in listing("queues", "name"):
        if row["name"].startswith(namespace):
            channel.queue_delete(row["name"])
    for row in listing("exchanges", "name"):
        if row["name"].startswith(namespace):
            channel.exchange_delete(row["name"])
    connection.close()


def rabbitmq() -> Harness:
    """RabbitMQ on the shared broker; the test's connections carry its namespace as their name."""
    try:
        pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL)).close()
    except pika.exceptions.AMQPError as exc:
        pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({exc!r}); start it (.ci/run does)")
    return Harness(
        name="rabbitmq",
        url=lambda namespace: f"{RABBITMQ_URL}?connection_name={namespace}",
        capabilities=frozenset(),
        pending=_rabbitmq_pending,
        cleanup=rabbitmq_cleanup,
        delay_slack=1.5,  # delays round to the retry ladder's rungs: 2 s waits 3 s
        timeout=15.0,
    )


HARNESSES: dict[str, Callable[[], Harness]] = {
    "memory": memory,
    "rabbitmq": rabbitmq,
    "redis": redis_streams,
    "sqs": sns_sqs,
}
