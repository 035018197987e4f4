"""SNS/SQS throughput: one message per API call (the seed library's way) vs eventbus's batches.

Both sides run in one process against the same local SNS/SQS server (moto's
server mode, started here on a free port unless --endpoint is given), on
queues of their own provisioned the same way (SNS topic -> raw, filtered
subscription -> SQS queue):

* one-per-call: ``sns.publish`` per message; then a loop of
  ``receive_message(MaxNumberOfMessages=1)`` + handle + ``delete_message``,
  as Melange's consumer does.
* eventbus: ``bus.publish_many`` (PublishBatch, 10 per call); then the sqs://
  consumer (receives of 10, worker threads, DeleteMessageBatch).

``--latency MS`` puts a proxy in front of the server that adds MS milliseconds
to every call, as the network to AWS would; the server on 127.0.0.1 has none.

Run: ``.venv/bin/python bench/sqs.py [--messages 300] [--latency 10] [--endpoint http://127.0.0.1:PORT]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import boto3

from eventbus import Bus, Registry, wait_until
from eventbus.backends.sqs import wire

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}


@contextmanager
def network_delay(endpoint: str, latency: float) -> Iterator[str]:
    """A TCP proxy in front of ``endpoint`` adding ``latency`` seconds to each request/response exchange.

    It stands in for the network between a service and AWS (a few to tens of
    milliseconds per call), which a server on 127.0.0.1 does not have.
    """
    if latency <= 0:
        yield endpoint
        return
    upstream = urllib.parse.urlsplit(endpoint)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)

    def pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                time.sleep(latency / 2)
                target.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection((upstream.hostname, upstream.port))
            threading.Thread(target=pump, args=(client, server), daemon=True).start()
            threading.Thread(target=pump, args=(server, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


@contextmanager
def local_server(endpoint: str | None) -> Iterator[str]:
    if endpoint:
        yield endpoint
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    executable = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(executable), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"moto_server did not start on port {port}") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


class CallCounter:
    """Counts the API calls made through the clients it is attached to."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-call.*.*", self._count)

    def _count(self, **_: Any) -> None:
        with self._lock:
            self.calls += 1


@attrs.frozen
class Result:
    publish_seconds: float  # until the last publish returned
    total_seconds: float  # until the last message was handled and deleted
    calls: int


def make_registry(received: list[int]) -> tuple[Registry, type[Any]]:
    registry = Registry()

    @registry.message(topic="bench")
    @attrs.frozen
    class Ping:
        n: int
        payload: str

    @registry.subscribe(Ping)
    def handle(ping: Ping) -> None:
        received.append(ping.n)

    return registry, Ping


def bench_url(endpoint: str, prefix: str) -> str:
    return f"sqs://bench:bench@?region={REGION}&endpoint={endpoint}&prefix={prefix}&wait=1"


def run_one_per_call(endpoint: str, messages: int, backlog: bool) -> Result:
    """Melange's way: one Publish, one ReceiveMessage and one DeleteMessage per message, one thread each."""
    prefix = f"b{uuid.uuid4().hex[:6]}-"
    received: list[int] = []
    registry, ping = make_registry(received)
    bus = Bus("one", bench_url(endpoint, prefix), registry=registry)
    bus.provision()
    encode = bus._marshaller.encode
    sns = boto3.client("sns", region_name=REGION, endpoint_url=endpoint, **CREDENTIALS)
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint, **CREDENTIALS)
    counter = CallCounter()
    counter.attach(sns)
    counter.attach(sqs)
    topic_arn = sns.create_topic(Name=f"{prefix}bench")["TopicArn"]
    queue_url = sqs.get_queue_url(QueueName=f"{prefix}one")["QueueUrl"]
    counter.calls = 0
    go = threading.Event()

    def consume() -> None:
        go.wait()
        while len(received) < messages:
            response = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1)
            for message in response.get("Messages", []):
                received.append(json.loads(message["Body"])["n"])
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    consumer = threading.Thread(target=consume)
    consumer.start()
    start = time.perf_counter()
    if not backlog:
        go.set()
    for n in range(messages):
        # The same bytes eventbus sends: body and the documented attributes.
        outgoing = wire.encode(encode(ping(n, "x" * 100))[1], fifo=False)
        sns.publish(TopicArn=topic_arn, Message=outgoing.body, MessageAttributes=outgoing.attributes)
    published = time.perf_counter()
    go.set()
    consumer.join()
    return Result(published - start, time.perf_counter() - start, counter.calls)


def run_eventbus(endpoint: str, messages: int, backlog: bool, concurrency: int) -> Result:
    """eventbus: PublishBatch, receives of 10, worker threads, DeleteMessageBatch."""
    prefix = f"b{uuid.uuid4().hex[:6]}-"
    received: list[int] = []
    registry, ping = make_registry(received)
    bus = Bus("batched", bench_url(endpoint, prefix), registry=registry, concurrency=concurrency, prefetch=20)
    bus.provision()
    backend = bus.backend
    counter = CallCounter()
    counter.attach(backend.sns)  # type: ignore[attr-defined]
    counter.attach(backend.sqs)  # type: ignore[attr-defined]
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint, **CREDENTIALS)
    queue_url = sqs.get_queue_url(QueueName=f"{prefix}batched")["QueueUrl"]
    pings = [ping(n, "x" * 100) for n in range(messages)]
    counter.calls = 0

    def drained() -> bool:
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return attributes == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}

    def consume() -> Any:
        dispatcher = bus.dispatchers()["batched"]
        return backend.consume("batched", dispatcher, concurrency=bus.concurrency, prefetch=bus.prefetch)

    start = time.perf_counter()
    consumer = None if backlog else consume()
    bus.publish_many(pings)
    published = time.perf_counter()
    consumer = consumer or consume()
    wait_until(lambda: len(received) >= messages, 600, interval=0.005)
    wait_until(drained, 60, interval=0.02)  # every message deleted, not just handled
    total = time.perf_counter() - start
    consumer.stop(10)
    bus.stop(10)
    return Result(published - start, total, counter.calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--endpoint", help="an SNS/SQS server to use instead of starting moto_server")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="milliseconds of emulated network round trip per API call"
    )
    args = parser.parse_args()
    n = args.messages
    print(f"{n} messages of ~120 bytes; eventbus with concurrency={args.concurrency}, prefetch=20")
    if args.latency:
        print(f"every API call goes through a proxy adding {args.latency:g} ms (an emulated network round trip)")
    print(f"{'':48} {'one-per-call':>13} {'eventbus':>10} {'ratio':>7}")
    with local_server(args.endpoint) as server, network_delay(server, args.latency / 1000) as endpoint:
        for backlog, title in (
            (False, "consumers running while publishing"),
            (True, "publish a backlog, then consume"),
        ):
            one = run_one_per_call(endpoint, n, backlog)
            batched = run_eventbus(endpoint, n, backlog, args.concurrency)
            print(f"{title} ({endpoint})")
            rows = [
                ("  publish (msg/s)", n / one.publish_seconds, n / batched.publish_seconds),
                ("  end to end: published, handled, deleted (msg/s)", n / one.total_seconds, n / batched.total_seconds),
            ]
            if backlog:
                rows.append(
                    (
                        "  consume the backlog (msg/s)",
                        n / (one.total_seconds - one.publish_seconds),
                        n / (batched.total_seconds - batched.publish_seconds),
                    )
                )
            for label, slow, fast in rows:
                print(f"{label:48} {slow:13.0f} {fast:10.0f} {fast / slow:6.1f}x")
            fewer = one.calls / max(batched.calls, 1)
            print(f"{'  API calls':48} {one.calls:13d} {batched.calls:10d} {fewer:6.1f}x fewer")


if __name__ == "__main__":
    main()
