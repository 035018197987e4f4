"""A local SNS/SQS server (moto's server mode) for the sqs:// backend tests.

The server runs in its own process on a free port of 127.0.0.1 and the
tests talk to it with the real boto3 client over HTTP. Every test gets a
unique name prefix, so its topics and queues are its own; they are deleted
after the test, and the server is reset between modules.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from eventbus import Bus, Registry

REGION = "us-east-1"
KEY = "testing"
SECRET = "testing"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="session")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a moto server started for this test session."""
    executable = Path(sys.executable).with_name("moto_server")
    if not executable.exists():
        pytest.fail(f"{executable} not found: install the dev extra (pip install -e '.[dev]')")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [str(executable), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not _answers(f"{url}/moto-api/"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"moto_server did not start on port {port}:\n{log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    yield url
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module", autouse=True)
def _reset_server(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


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
        settings = {"region": REGION, "endpoint": endpoint, "prefix": prefix, "wait": 1, "visibility": 10}
        settings.update(options)
        query = "&".join(f"{key}={value}" for key, value in settings.items())
        return f"sqs://{KEY}:{SECRET}@?{query}"

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
