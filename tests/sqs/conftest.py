"""A local SNS/SQS server (moto's server mode) for the sqs:// backend tests.

The server runs in its own process on a free port of 127.0.0.1 and the
tests talk to it with the real boto3 client over HTTP. Every test gets a
unique name prefix, so its topics and queues are its own; they are deleted
after the test, and the server is reset between modules.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from eventbus import Bus, Registry
from tests import moto_server
from tests.moto_server import KEY, REGION, SECRET


@pytest.fixture(scope="session")
def endpoint() -> str:
    """The URL of the session's moto server."""
    return moto_server.shared().url


@pytest.fixture(scope="module", autouse=True)
def _reset_server(endpoint: str) -> None:
    moto_server.shared().reset()


@pytest.fixture
def sqs(endpoint: str) -> Any:
    """A plain boto3 SQS client on the local server."""
    return boto3.client(
        "sqs", region_name=REGION, endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET
    )


@pytest.fixture
def sns(endpoint: str) -> Any:
    """A plain boto3 SNS client on the local server."""
    return boto3.client(
        "sns", region_name=REGION, endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET
    )


@pytest.fixture
def prefix(sqs: Any, sns: Any) -> Iterator[str]:
    """A name prefix of this test's own; its queues and topics are deleted afterwards."""
    name = f"t{uuid.uuid4().hex[:8]}-"
    yield name
    for url in sqs.list_queues(QueueNamePrefix=name).get("QueueUrls", []):
        sqs.delete_queue(QueueUrl=url)
    for topic in sns.list_topics().get("Topics", []):
        if topic["TopicArn"].rsplit(":", 1)[-1].startswith(name):
            sns.delete_topic(TopicArn=topic["TopicArn"])


@pytest.fixture
def url_for(endpoint: str, prefix: str) -> Callable[..., str]:
    """``url_for(wait=1, ...)``: an sqs:// URL on the local server with this test's prefix."""

    def make(**options: Any) -> str:
        settings = {"endpoint": endpoint, "prefix": prefix, **options}
        return moto_server.sqs_url(**settings)

    return make


@pytest.fixture
def make_bus(url_for: Callable[..., str]) -> Iterator[Callable[..., Bus]]:
    """``make_bus(service, registry, url=None, **bus_options)``; every bus is stopped after the test."""
    buses: list[Bus] = []

    def make(service: str, registry: Registry, url: str | None = None, **options: Any) -> Bus:
        bus = Bus(service, url or url_for(), registry=registry, **options)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.stop(timeout=10)
