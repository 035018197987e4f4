"""Fixtures for the RabbitMQ tests: a real broker, unique names per test, cleanup after.

The broker is ``$EVENTBUS_RABBITMQ_URL`` (default: guest on 127.0.0.1:5672). If
it cannot be reached the tests fail, loudly: they never skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pika.exceptions
import pytest
from rabbitmq_support import BROKER_URL, Broker

from eventbus import Registry


@pytest.fixture
def uid() -> str:
    """A suffix unique to this test, for every name it creates on the broker."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def connection_name(uid: str) -> str:
    """The ``connection_name`` prefix of the bus's connections in this test."""
    return f"eventbus-test-{uid}"


@pytest.fixture
def amqp_url(connection_name: str) -> str:
    """The broker URL for the bus under test, with connections named after the test."""
    separator = "&" if "?" in BROKER_URL else "?"
    return f"{BROKER_URL}{separator}connection_name={connection_name}"


@pytest.fixture
def broker(uid: str) -> Iterator[Broker]:
    """A plain pika view of the broker; deletes what the test created afterwards."""
    try:
        view = Broker(uid)
    except pika.exceptions.AMQPError as exc:
        pytest.fail(f"RabbitMQ is not reachable at {BROKER_URL} ({exc!r}); start it (rabbitmq-server -detached)")
    yield view
    view.cleanup()


@pytest.fixture
def registry() -> Registry:
    """A fresh registry, so that tests never see each other's declarations."""
    return Registry()
