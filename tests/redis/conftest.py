"""Fixtures for the Redis tests: the shared server (a unique key prefix per test), a private server, buses."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from attrs import frozen

from eventbus import Bus, Registry
from tests.private_redis import PrivateRedis

REDIS_URL = os.environ.get("EVENTBUS_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared server; the tests fail (never skip) if it is down."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); start it (.ci/run does) or set EVENTBUS_REDIS_URL")
    return REDIS_URL


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards."""
    value = f"eventbus-test-{uuid.uuid4().hex[:12]}:"
    yield value
    keys = list(client.scan_iter(match=f"{value}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def url(redis_url: str, prefix: str) -> str:
    """The backend URL of this test: its own prefix, quick reclaim and short blocking reads."""
    return f"{redis_url}?prefix={prefix}&reclaim=1&block=0.2"


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def kinds(registry: Registry) -> SimpleNamespace:
    """Message types declared on the test's registry: two on ``orders``, one on ``payments``."""

    @registry.message(topic="orders")
    @frozen
    class OrderPlaced:
        order_id: str

    @registry.message(topic="orders")
    @frozen
    class OrderCancelled:
        order_id: str

    @registry.message(topic="payments")
    @frozen
    class PaymentTaken:
        order_id: str

    return SimpleNamespace(OrderPlaced=OrderPlaced, OrderCancelled=OrderCancelled, PaymentTaken=PaymentTaken)


@pytest.fixture
def make_bus(url: str, registry: Registry) -> Iterator[Callable[..., Bus]]:
    """Build buses on the test's URL and registry; they are stopped after the test."""
    made: list[Bus] = []

    def make(service: str, *handlers: object, **options: Any) -> Bus:
        options.setdefault("url", url)
        options.setdefault("registry", registry)
        bus = Bus(service, **options)
        if handlers:
            bus.include(*handlers)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.stop(timeout=10)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private server whose data survives a restart (append-only file, fsync on every write)."""
    server = PrivateRedis(data_dir=str(tmp_path))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settled(client: redis.Redis, prefix: str) -> Callable[..., bool]:
    """``settled(queue[, client])``: whether the queue has nothing pending, unread, waiting or delayed."""
    return lambda queue, on=client: is_settled(on, prefix, queue)


def is_settled(client: redis.Redis, prefix: str, queue: str, topics: tuple[str, ...] = ("orders", "payments")) -> bool:
    own = f"{prefix}queue:{queue}"
    if client.xlen(own) or client.zcard(f"{prefix}delayed:{queue}"):
        return False
    for key in [own, *(f"{prefix}topic:{topic}" for topic in topics)]:
        if not client.exists(key):
            continue
        for group in client.xinfo_groups(key):
            if group["name"].decode() == queue and (group["pending"] or group.get("lag")):
                return False
    return True
